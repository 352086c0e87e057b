"""`VLMReranker`: a vision-language model judges each (query, candidate) pair.

The score of a pair is P("Yes") for the question "Does the candidate match the
query? Answer Yes or No.", the two-way softmax of the model's next-token logits for
"Yes" and "No" after a prompt holding the query (its instruction, image and text)
and the candidate (its image and text, from meta.arrow and the ``image`` reference).
Pairs run in padded batches; only the final position's hidden state meets the two
rows of the LM head, so no vocabulary-sized logits are computed.

The judge is any Qwen2-VL, Qwen2.5-VL or LLaVA-NeXT checkpoint `load_encoder` can
load (an instruction-tuned one such as ``Qwen/Qwen2-VL-2B-Instruct`` judges best),
or, by default, the index's own VLM2Vec model.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from mmsearch.encoders import load_encoder
from mmsearch.encoders.vlm2vec import last_token_pool
from mmsearch.errors import InputError
from mmsearch.images import load_image
from mmsearch.types import Query

from .rerank import RerankContext, _check_depth, rerank_depth, sort_result

if TYPE_CHECKING:  # pragma: no cover
    from .index import Index

DEFAULT_QUESTION = "Does the candidate match the query? Answer Yes or No."
JUDGE_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "llava_next")
_IMAGE_SLOT = {"qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
               "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>", "llava_next": "<image>\n"}
_CHAT = {"qwen2_vl": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
         "qwen2_5_vl": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
         "llava_next": "[INST] {} [/INST]"}


@dataclass(frozen=True)
class Candidate:
    """What the judge sees of a candidate."""

    text: Optional[str] = None
    image: Optional[Image.Image] = None


@dataclass(frozen=True)
class VLMReranker:
    """Rescore the top ``k * factor`` candidates (or `depth`) by P("Yes").

    `model`: None (the index's encoder), a model id / checkpoint directory (loaded on
    first use with `load_encoder` on `device`), or a loaded VLM encoder. The loaded
    judge is kept and shared by all threads.
    """

    model: Any = field(default=None, compare=False)
    factor: float = 2.0
    depth: Optional[int] = None
    batch_size: int = 8
    question: str = DEFAULT_QUESTION
    device: str = "auto"
    max_text_chars: int = 2000
    _loaded: dict = field(default_factory=dict, init=False, compare=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, compare=False, repr=False)
    name = "vlm"

    def __post_init__(self) -> None:
        _check_depth(self.factor, self.depth)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"vlm batch_size={self.batch_size!r}: expected an int >= 1")
        if not isinstance(self.question, str) or not self.question.strip():
            raise InputError(f"vlm question={self.question!r}: expected a non-empty string")
        if self.model is not None and not isinstance(self.model, (str, os.PathLike)):
            self._loaded["judge"] = _check_judge(self.model)

    def candidates(self, k: int) -> int:
        return rerank_depth(k, self.factor, self.depth)

    def rerank(self, ctx: RerankContext, D: np.ndarray, I: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if ctx.queries is None:
            raise InputError("the vlm reranker needs the queries themselves (text/images): use Index.search, "
                             "not search_vectors")
        valid = I >= 0
        records = ctx.view.records(I[valid])
        candidates = [Candidate(r.get("text"), ctx.index.candidate_image(r, ctx.view)) for r in records]
        queries = [_loaded(q) for q in ctx.queries]
        pairs = [queries[i] for i in np.nonzero(valid)[0]]
        scores = np.zeros(I.shape, dtype=np.float32)
        scores[valid] = self.score_pairs(pairs, candidates, ctx.index)
        return sort_result(scores, I, keep_max=True)

    def score_pairs(self, queries: Sequence[Query], candidates: Sequence[Candidate],
                    index: Optional["Index"] = None) -> np.ndarray:
        """P("Yes") for each (queries[i], candidates[i]), float32 (n,)."""
        if len(queries) != len(candidates):
            raise InputError(f"{len(queries)} queries for {len(candidates)} candidates")
        judge = self.judge(index)
        out = np.empty(len(queries), dtype=np.float32)
        for start in range(0, len(queries), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self._batch(judge, queries[start:stop], candidates[start:stop])
        return out

    def judge(self, index: Optional["Index"] = None):
        """The loaded judge model (an encoder exposing .model, .processor, .backbone)."""
        if self.model is None:  # the index's own model (each index loads and keeps its encoder)
            if index is None:
                raise InputError("VLMReranker(model=None) judges with an index's encoder; "
                                 "pass model=... to use it on its own")
            return _check_judge(index.encoder)
        if "judge" not in self._loaded:
            with self._lock:
                if "judge" not in self._loaded:
                    self._loaded["judge"] = _check_judge(load_encoder(self.model, device=self.device))
        return self._loaded["judge"]

    def prompt(self, backbone: str, query: Query, candidate: Candidate) -> str:
        """The judge's prompt for one pair (images as the backbone's placeholders)."""
        slot, clip = _IMAGE_SLOT[backbone], self.max_text_chars
        lines = [query.instruction] if query.instruction else []
        lines.append("Query: " + (slot if query.image is not None else "") + (query.text or "")[:clip])
        lines.append("Candidate: " + (slot if candidate.image is not None else "") + (candidate.text or "")[:clip])
        lines.append(self.question)
        return _CHAT[backbone].format("\n".join(lines))

    def _batch(self, judge, queries: Sequence[Query], candidates: Sequence[Candidate]) -> np.ndarray:
        import torch

        texts, images = [], []
        for q, c in zip(queries, candidates):
            texts.append(self.prompt(judge.backbone, q, c))
            images += [judge.prepare_image(im) for im in (q.image, c.image) if im is not None]
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = images
        batch = {k: (v.to(judge.device) if hasattr(v, "to") else v) for k, v in judge.processor(**kwargs).items()}
        if "pixel_values" in batch and torch.is_floating_point(batch["pixel_values"]):
            batch["pixel_values"] = batch["pixel_values"].to(judge.dtype)
        yes, no = _answer_ids(judge.processor.tokenizer)
        with torch.inference_mode():
            last = last_token_pool(judge.final_hidden_states(batch), batch["attention_mask"]).float()
            head = judge.model.get_output_embeddings()
            logits = last @ head.weight[[yes, no]].float().T
            if getattr(head, "bias", None) is not None:
                logits = logits + head.bias[[yes, no]].float()
            return torch.softmax(logits, dim=-1)[:, 0].cpu().numpy()


def _check_judge(encoder):
    backbone = getattr(encoder, "backbone", None)
    if backbone not in JUDGE_BACKBONES or not hasattr(encoder, "processor"):
        raise InputError(f"the vlm reranker needs a vision-language model ({', '.join(JUDGE_BACKBONES)}); "
                         f"got {getattr(encoder, 'name', encoder)!r} with backbone {backbone!r}. "
                         f"Pass VLMReranker(model='Qwen/Qwen2-VL-2B-Instruct') or another VLM.")
    return encoder


def _answer_ids(tokenizer) -> Tuple[int, int]:
    ids = [tokenizer.encode(word, add_special_tokens=False) for word in ("Yes", "No")]
    if not all(ids) or ids[0][0] == ids[1][0]:
        raise InputError(f"the judge's tokenizer cannot tell 'Yes' from 'No' by their first token: {ids}")
    return ids[0][0], ids[1][0]


def _loaded(query: Query) -> Query:
    """The query with its image decoded once (it is paired with every candidate)."""
    if query.image is None:
        return query
    return dataclasses.replace(query, image=load_image(query.image))
