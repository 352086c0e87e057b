"""`VLMReranker`: a vision-language model judges each (query, candidate) pair.

Two prompt-and-score formats (``VLMReranker(format=...)``):

- ``"yesno"``: P("Yes") for the question "Does the candidate match the query? Answer
  Yes or No.", the two-way softmax of the judge's next-token logits for "Yes" and "No"
  after a prompt holding the query (its instruction, image and text) and the candidate
  (its image and text, from meta.arrow and the ``image`` reference). Any judge below.
- ``"qwen3_reranker"``: Qwen3-VL-Reranker's own prompt and score (repo
  QwenLM/Qwen3-VL-Embedding, ``src/models/qwen3_vl_reranker.py``, class
  ``Qwen3VLReranker``): a fixed system message, ``<Instruct>: {instruction}<Query>:...``
  and ``\\n<Document>:...`` in the user turn, left padding, and the score
  sigmoid(h · (W["yes"] − W["no"])) of the last hidden state h and the LM head rows of
  the tokens "yes" and "no". Qwen-family judges (qwen2_vl, qwen2_5_vl, qwen3_vl).
- ``"auto"`` (the default): ``"qwen3_reranker"`` for a ``qwen3_vl`` judge whose
  checkpoint name says it is a reranker (``Qwen/Qwen3-VL-Reranker-2B``, a local
  ``.../Qwen3-VL-Reranker-8B``), else ``"yesno"``.

Pairs run in padded batches; only the final position's hidden state meets the two
rows of the LM head, so no vocabulary-sized logits are computed. The judge runs with
transformers' standard (M-RoPE) positions, as a generative model is trained.

The judge is any Qwen2-VL, Qwen2.5-VL, Qwen3-VL or LLaVA-NeXT checkpoint `load_encoder`
can load (an instruction-tuned one such as ``Qwen/Qwen2-VL-2B-Instruct`` judges best
with ``"yesno"``; ``Qwen/Qwen3-VL-Reranker-2B`` is trained for ``"qwen3_reranker"``),
or, by default, the index's own model.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from mmsearch.encoders import VISION_SLOT, image_token, load_encoder
from mmsearch.encoders.pooling import last_token_pool
from mmsearch.errors import InputError
from mmsearch.images import load_image, smart_resize
from mmsearch.types import Query

from .rerank_context import RerankContext, check_depth, rerank_depth, sort_result

FORMATS = ("auto", "yesno", "qwen3_reranker")
DEFAULT_QUESTION = "Does the candidate match the query? Answer Yes or No."
JUDGE_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_next")
_QWEN_CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
_IMAGE_SLOT = {"qwen2_vl": VISION_SLOT, "qwen2_5_vl": VISION_SLOT, "qwen3_vl": VISION_SLOT,
               "llava_next": image_token("llava_next") + "\n"}
_CHAT = {"qwen2_vl": _QWEN_CHAT, "qwen2_5_vl": _QWEN_CHAT, "qwen3_vl": _QWEN_CHAT, "llava_next": "[INST] {} [/INST]"}

# --- Qwen3-VL-Reranker (QwenLM/Qwen3-VL-Embedding, src/models/qwen3_vl_reranker.py) ---
# System text: Qwen3VLReranker.format_mm_instruction. Default instruction: the
# `default_instruction` argument of Qwen3VLReranker.__init__.
QWEN3_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
                'provided. Note that the answer can only be "yes" or "no".')
QWEN3_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
QWEN3_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
QWEN3_ANSWERS = ("yes", "no")  # vocabulary entries, looked up as in Qwen3VLReranker.__init__ (get_vocab())
# Image bounds in merged tokens: module constants MIN_PIXELS = 4 * IMAGE_FACTOR**2 and
# MAX_PIXELS = 1800 * IMAGE_FACTOR**2 with IMAGE_FACTOR = 16 * 2 (Qwen3-VL's patch x merge).
QWEN3_MIN_TOKENS, QWEN3_MAX_TOKENS = 4, 1800


@dataclass(frozen=True)
class Candidate:
    """What the judge sees of a candidate."""

    text: Optional[str] = None
    image: Optional[Image.Image] = None


@dataclass(frozen=True)
class VLMReranker:
    """Rescore the top ``k * factor`` candidates (or `depth`) by the judge's score.

    `model`: None (the index's encoder), a model id / checkpoint directory (loaded on
    first use with `load_encoder` on `device`), or a loaded VLM encoder. The loaded
    judge is kept and shared by all threads.
    `format`: ``"yesno"``, ``"qwen3_reranker"`` or ``"auto"`` (see the module docstring).
    `question`: the yes/no question of ``"yesno"``. `instruction`: the ``<Instruct>:``
    text of ``"qwen3_reranker"``; None uses each query's instruction, else Qwen's default.
    """

    model: Any = field(default=None, compare=False)
    factor: float = 2.0
    depth: Optional[int] = None
    batch_size: int = 8
    question: str = DEFAULT_QUESTION
    device: str = "auto"
    max_text_chars: int = 2000
    format: str = "auto"
    instruction: Optional[str] = None
    _loaded: dict = field(default_factory=dict, init=False, compare=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, compare=False, repr=False)
    name = "vlm"

    def __post_init__(self) -> None:
        check_depth(self.factor, self.depth)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"vlm batch_size={self.batch_size!r}: expected an int >= 1")
        if not isinstance(self.question, str) or not self.question.strip():
            raise InputError(f"vlm question={self.question!r}: expected a non-empty string")
        if self.format not in FORMATS:
            raise InputError(f"vlm format={self.format!r}: expected one of {list(FORMATS)}")
        if self.instruction is not None and (not isinstance(self.instruction, str) or not self.instruction.strip()):
            raise InputError(f"vlm instruction={self.instruction!r}: expected None or a non-empty string")
        if self.model is not None and not isinstance(self.model, (str, os.PathLike)):
            self._loaded["judge"] = self._check(_check_judge(self.model))

    def candidates(self, k: int) -> int:
        return rerank_depth(k, self.factor, self.depth)

    def rerank(self, ctx: RerankContext, D: np.ndarray, I: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if ctx.queries is None:
            raise InputError("the vlm reranker needs the queries themselves (text/images): use Index.search, "
                             "not search_vectors")
        valid = I >= 0
        records = ctx.view.records(I[valid])
        candidates = [Candidate(r.get("text"), ctx.view.candidate_image(r)) for r in records]
        queries = [_loaded(q) for q in ctx.queries]
        pairs = [queries[i] for i in np.nonzero(valid)[0]]
        scores = np.zeros(I.shape, dtype=np.float32)
        scores[valid] = self.score_pairs(pairs, candidates, ctx.encoder)
        return sort_result(scores, I, keep_max=True)

    def score_pairs(self, queries: Sequence[Query], candidates: Sequence[Candidate],
                    encoder: Any = None) -> np.ndarray:
        """The judge's score of each (queries[i], candidates[i]) in [0, 1], float32 (n,).
        `encoder`: the judge when this reranker has no model of its own (a search passes
        the index's encoder)."""
        if len(queries) != len(candidates):
            raise InputError(f"{len(queries)} queries for {len(candidates)} candidates")
        judge = self.judge(encoder)
        fmt = self.format_for(judge)
        rows = (_qwen3_answer_ids if fmt == "qwen3_reranker" else _answer_ids)(judge.processor.tokenizer)
        out = np.empty(len(queries), dtype=np.float32)
        for start in range(0, len(queries), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self._batch(judge, fmt, rows, queries[start:stop], candidates[start:stop])
        return out

    def judge(self, encoder: Any = None):
        """The loaded judge model (an encoder exposing .model, .processor, .backbone):
        this reranker's model, else `encoder` (in a search, the index's own)."""
        if self.model is None:  # the index's own model (each index loads and keeps its encoder)
            if encoder is None:
                raise InputError("VLMReranker(model=None) judges with an index's encoder; "
                                 "pass model=... to use it on its own")
            return self._check(_check_judge(encoder))
        if "judge" not in self._loaded:
            with self._lock:
                if "judge" not in self._loaded:
                    self._loaded["judge"] = self._check(_check_judge(load_encoder(self.model, device=self.device)))
        return self._loaded["judge"]

    def format_for(self, judge) -> str:
        """The concrete format ("yesno" or "qwen3_reranker") this reranker uses with `judge`."""
        if self.format != "auto":
            return self.format
        return "qwen3_reranker" if _says_qwen3_reranker(judge) else "yesno"

    def prompt(self, backbone: str, query: Query, candidate: Candidate, format: Optional[str] = None) -> str:
        """The judge's prompt for one pair (images as the backbone's placeholders).

        `format`: "yesno" or "qwen3_reranker"; default this reranker's format (an
        ``"auto"`` one depends on the judge: pass ``format=self.format_for(judge)``)."""
        fmt = self.format if format is None else format
        if fmt not in FORMATS[1:]:
            raise InputError(f"prompt format={fmt!r}: expected one of {list(FORMATS[1:])}"
                             + ("; 'auto' depends on the judge, pass format=reranker.format_for(judge)"
                                if fmt == "auto" else ""))
        if fmt == "qwen3_reranker":
            if backbone not in QWEN3_BACKBONES:
                raise InputError(f"prompt format='qwen3_reranker' is for Qwen-family backbones "
                                 f"({', '.join(QWEN3_BACKBONES)}); got backbone {backbone!r}")
            return self._qwen3_prompt(query, candidate)
        slot, clip = _IMAGE_SLOT[backbone], self.max_text_chars
        lines = [query.instruction] if query.instruction else []
        lines.append("Query: " + (slot if query.image is not None else "") + (query.text or "")[:clip])
        lines.append("Candidate: " + (slot if candidate.image is not None else "") + (candidate.text or "")[:clip])
        lines.append(self.question)
        return _CHAT[backbone].format("\n".join(lines))

    def _qwen3_prompt(self, query: Query, candidate: Candidate) -> str:
        # Qwen3VLReranker.format_mm_instruction builds the messages (system; user: the
        # "<Instruct>: " text, then format_mm_content of the query with prefix "<Query>:" and of
        # the document with prefix "\n<Document>:"), and Qwen3VLReranker.tokenize renders them
        # with the processor's chat template, add_generation_prompt=True. Qwen3-VL's template
        # concatenates a message's parts with no separator and ends with
        # "<|im_start|>assistant\n" (no <think> block); vLLM's
        # examples/pooling/score/template/qwen3_vl_reranker.jinja renders the same string.
        instruction = self.instruction or query.instruction or QWEN3_INSTRUCTION
        user = ("<Instruct>: " + instruction + _qwen3_part("<Query>:", query.text, query.image, self.max_text_chars)
                + _qwen3_part("\n<Document>:", candidate.text, candidate.image, self.max_text_chars))
        return f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n" + _QWEN_CHAT.format(user)

    def _check(self, judge):
        if self.format == "qwen3_reranker" and judge.backbone not in QWEN3_BACKBONES:
            raise InputError(f"vlm format='qwen3_reranker' needs a Qwen-family judge ({', '.join(QWEN3_BACKBONES)}); "
                             f"got {getattr(judge, 'name', judge)!r} with backbone {judge.backbone!r}. "
                             f"Use format='yesno' with this judge.")
        return judge

    def _batch(self, judge, fmt: str, rows: Tuple[int, int], queries: Sequence[Query],
               candidates: Sequence[Candidate]) -> np.ndarray:
        import torch

        texts, images = [], []
        prepare = _qwen3_image_sizer(judge) if fmt == "qwen3_reranker" else judge.prepare_image
        for q, c in zip(queries, candidates):
            texts.append(self.prompt(judge.backbone, q, c, format=fmt))
            images += [prepare(im) for im in (q.image, c.image) if im is not None]
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if fmt == "qwen3_reranker":  # Qwen3VLReranker.__init__ loads its processor with padding_side='left'
            kwargs["padding_side"] = "left"
        if images:
            kwargs["images"] = images
            if fmt == "qwen3_reranker":  # sized above; Qwen3VLReranker.tokenize passes do_resize=False
                kwargs["do_resize"] = False
        batch = {k: (v.to(judge.device) if hasattr(v, "to") else v) for k, v in judge.processor(**kwargs).items()}
        if "pixel_values" in batch and torch.is_floating_point(batch["pixel_values"]):
            batch["pixel_values"] = batch["pixel_values"].to(judge.dtype)
        head = judge.model.get_output_embeddings()
        with torch.inference_mode():
            hidden = judge.final_hidden_states(batch, positions="mrope")
            last = last_token_pool(hidden, batch["attention_mask"]).float()
            weight = head.weight[list(rows)].float()
            if fmt == "qwen3_reranker":
                # Qwen3VLReranker.get_binary_linear / compute_scores: one bias-free row
                # W["yes"] - W["no"] applied to last_hidden_state[:, -1], then a sigmoid.
                return torch.sigmoid(last @ (weight[0] - weight[1])).cpu().numpy()
            logits = last @ weight.T
            if getattr(head, "bias", None) is not None:
                logits = logits + head.bias[list(rows)].float()
            return torch.softmax(logits, dim=-1)[:, 0].cpu().numpy()


def _check_judge(encoder):
    backbone = getattr(encoder, "backbone", None)
    if backbone not in JUDGE_BACKBONES or not hasattr(encoder, "processor"):
        raise InputError(f"the vlm reranker needs a vision-language model ({', '.join(JUDGE_BACKBONES)}); "
                         f"got {getattr(encoder, 'name', encoder)!r} with backbone {backbone!r}. "
                         f"Pass VLMReranker(model='Qwen/Qwen2-VL-2B-Instruct') or another VLM.")
    return encoder


def _says_qwen3_reranker(judge) -> bool:
    """A Qwen3-VL judge whose checkpoint name (id or directory) says "reranker": the
    released checkpoints' configs name the plain Qwen3VLForConditionalGeneration."""
    if judge.backbone != "qwen3_vl":
        return False
    config = getattr(getattr(judge, "model", None), "config", None)
    names = (getattr(judge, "name", None), getattr(config, "_name_or_path", None))
    return any("reranker" in str(n).lower() for n in names if n)


def _answer_ids(tokenizer) -> Tuple[int, int]:
    ids = [tokenizer.encode(word, add_special_tokens=False) for word in ("Yes", "No")]
    if not all(ids) or ids[0][0] == ids[1][0]:
        raise InputError(f"the judge's tokenizer cannot tell 'Yes' from 'No' by their first token: {ids}")
    return ids[0][0], ids[1][0]


def _qwen3_answer_ids(tokenizer) -> Tuple[int, int]:
    vocab = tokenizer.get_vocab()
    missing = [word for word in QWEN3_ANSWERS if word not in vocab]
    if missing:
        raise InputError(f"vlm format='qwen3_reranker' scores the vocabulary tokens {list(QWEN3_ANSWERS)}, but the "
                         f"judge's tokenizer has no {missing}; use a Qwen3-VL-Reranker checkpoint or format='yesno'")
    return vocab["yes"], vocab["no"]


def _qwen3_part(prefix: str, text: Optional[str], image: Optional[Image.Image], clip: int) -> str:
    """Qwen3VLReranker.format_mm_content as rendered: the prefix, the image, then the text;
    "NULL" when there is neither."""
    if text is None and image is None:
        return prefix + "NULL"
    return prefix + (VISION_SLOT if image is not None else "") + (text[:clip] if text is not None else "")


def _qwen3_image_sizer(judge):
    """Image sizing of Qwen3VLReranker: qwen_vl_utils.fetch_image with the reranker's
    min_pixels/max_pixels (4 and 1800 merged tokens) and factor patch_size * merge_size
    (16 * 2 for Qwen3-VL; the judge's own for Qwen2-VL-family judges), then
    do_resize=False in the processor."""
    proc = judge.processor.image_processor
    factor = int(proc.patch_size) * int(proc.merge_size)

    def size(image: Image.Image) -> Image.Image:
        image = image if image.mode == "RGB" else load_image(image, max_pixels=None)  # alpha over white
        width, height = image.size
        new_h, new_w = smart_resize(height, width, factor, QWEN3_MIN_TOKENS * factor ** 2,
                                   QWEN3_MAX_TOKENS * factor ** 2)
        return image.resize((new_w, new_h), Image.BICUBIC)  # PIL's default filter, as fetch_image uses

    return size


def _loaded(query: Query) -> Query:
    """The query with its image decoded once (it is paired with every candidate)."""
    if query.image is None:
        return query
    return dataclasses.replace(query, image=load_image(query.image))
