"""Embedding families against oracles written from the authors' code.

Each oracle embeds ONE input (no padding) the way the family's reference implementation
does, on a tiny sharpened checkpoint, with transformers directly (the model class from
``from_pretrained``, the processor built here; nothing from ``mmsearch.encoders``). Where a
rule comes from is cited beside it; "ref:" names the repository and file/function read.

Why sharpened: a random tiny model attends almost uniformly, so a wrong position rule or a
missing prompt token barely moves its output (DESIGN §8). ``sharpen_attention`` scales the
text q/k projections x6 and the images are 150-250 px; ``test_oracle_rejects_*`` show each
planted wrong rule falling below cosine 0.9999 before any passing parity test is trusted.

The parity tests (``test_encode_*``) hold ``mmsearch.load_encoder(..., family=...)`` to
cosine >= 0.9999 against the oracles: text, image, image+text, with and without an
instruction, batched and alone, on checkpoints saved with left and right padding.
"""
from __future__ import annotations

import math
import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image

from mmsearch import testing

PARITY = 0.9999  # cosine an encoder must reach against the oracle

# family -> tiny checkpoint kind
FAMILY_KIND = {
    "vlm2vec": "qwen2_vl",
    "gme": "qwen2_vl",
    "qwen3_vl_embedding": "qwen3_vl",
    "jina_v4": "qwen2_5_vl",
}
FAMILIES = tuple(FAMILY_KIND)

IMAGE_PAD = "<|image_pad|>"
VISION_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


# ----------------------------------------------------------------------------- inputs


def _image(width: int, height: int, seed: int) -> Image.Image:
    """A seeded RGB test image: smooth colour gradients plus noise, 150-250 px a side."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        127 + 120 * np.sin(xx / rng.uniform(8, 30) + rng.uniform(0, 6)),
        127 + 120 * np.cos(yy / rng.uniform(8, 30) + rng.uniform(0, 6)),
        127 + 120 * np.sin((xx + yy) / rng.uniform(8, 30)),
    ], axis=-1)
    noise = rng.normal(0, 25, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


IMAGES = {"a": _image(200, 170, 1), "b": _image(160, 230, 2), "c": _image(250, 150, 3)}

# name -> (text, image); texts of different lengths so a batch needs padding
CASES = {
    "text_short": ("a red bus", None),
    "text_long": ("two cats sleeping on a blue sofa next to a small dog running on the grass", None),
    "image_a": (None, IMAGES["a"]),
    "image_b": (None, IMAGES["b"]),
    "image_text": ("make it red", IMAGES["c"]),
}
TEXT_CASES = ("text_short", "text_long")
IMAGE_CASES = ("image_a", "image_b")
KIND_OF_CASE = {"text_short": "text", "text_long": "text", "image_a": "image", "image_b": "image",
                "image_text": "image+text"}


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.double(), dim=-1).numpy()


# ----------------------------------------------------------------------------- processors


def _image_only(base):
    """Qwen processors without the video slot (torchvision-free; see mmsearch.testing)."""

    class ImageOnly(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnly


def _processor(kind: str, path, **image_processor_overrides):
    import transformers as tf

    cls = {"qwen2_vl": tf.Qwen2VLProcessor, "qwen2_5_vl": tf.Qwen2_5_VLProcessor, "qwen3_vl": tf.Qwen3VLProcessor}[kind]
    image_processor = tf.Qwen2VLImageProcessorPil.from_pretrained(str(path), **image_processor_overrides)
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    return _image_only(cls)(image_processor=image_processor, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- shared reference rules


def _round_by(n, f):
    return round(n / f) * f


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """ref: qwen_vl_utils smart_resize, as copied into Alibaba-NLP gme_inference.py (VLM2Vec
    src/model/baseline_backbone/gme/gme_inference.py) and QwenLM/Qwen3-VL
    qwen-vl-utils/src/qwen_vl_utils/vision_process.py (same arithmetic)."""
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _reference_rope_index(input_ids: torch.Tensor, image_grid_thw, config) -> torch.Tensor:
    """M-RoPE position ids (3, 1, L) of ONE unpadded sequence, as transformers 4.4x computed them.

    ref: TIGER-AI-Lab/VLM2Vec src/model/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py,
    Qwen2VLForConditionalGeneration.get_rope_index. An image is found ONLY as the token right
    after <|vision_start|>; every token outside a found image counts like text, continuing
    from the last position + 1. A prompt without <|vision_start|> (VLM2Vec's bare
    <|image_pad|>) therefore gets arange(L) on all three rows. jina-v4's vendored Qwen2.5-VL
    get_rope_index (called explicitly in JinaEmbeddingsV4Model.get_last_hidden_states) gives the
    same ids for still images (its time index is 0 for images).
    """
    tokens = input_ids.tolist()
    merge = config.vision_config.spatial_merge_size
    starts = [i for i, t in enumerate(tokens[:-1]) if t == config.vision_start_token_id]
    n_images = sum(tokens[i + 1] == config.image_token_id for i in starts)
    parts, st, image_index = [], 0, 0
    for _ in range(n_images):
        ed = tokens.index(config.image_token_id, st)
        t, h, w = (int(v) for v in image_grid_thw[image_index])
        image_index += 1
        gh, gw = h // merge, w // merge
        text_len = ed - st
        st_idx = int(parts[-1].max()) + 1 if parts else 0
        parts.append(torch.arange(text_len).view(1, -1).expand(3, -1) + st_idx)
        t_index = torch.arange(t).view(-1, 1).expand(-1, gh * gw).flatten()
        h_index = torch.arange(gh).view(1, -1, 1).expand(t, -1, gw).flatten()
        w_index = torch.arange(gw).view(1, 1, -1).expand(t, gh, -1).flatten()
        parts.append(torch.stack([t_index, h_index, w_index]) + text_len + st_idx)
        st = ed + t * gh * gw
    if st < len(tokens):
        st_idx = int(parts[-1].max()) + 1 if parts else 0
        parts.append(torch.arange(len(tokens) - st).view(1, -1).expand(3, -1) + st_idx)
    return torch.cat(parts, dim=1).reshape(3, 1, -1)


def _one_d_positions(length: int) -> torch.Tensor:
    return torch.arange(length).view(1, 1, -1).expand(3, 1, -1)


def _pil_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    # ref: both gme_inference.fetch_image and qwen_vl_utils.fetch_image call image.resize((w, h))
    # with PIL's default filter (bicubic for RGB)
    return image.resize((width, height))


# ----------------------------------------------------------------------------- oracles


class _Oracle:
    def __init__(self, family: str, path):
        self.family, self.path = family, path
        self.kind = FAMILY_KIND[family]
        self.model = testing.model_class(self.kind).from_pretrained(str(path)).eval()
        if family == "gme":
            # ref: gme_inference.GmeQwen2VL.__init__: AutoProcessor.from_pretrained(model,
            # min_pixels=min_image_tokens*28*28, max_pixels=max_image_tokens*28*28), defaults 256 / 1280
            # (min/max_pixels, not size: the saved min/max_pixels would override a size)
            self.processor = _processor(self.kind, path, min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28)
        else:
            self.processor = _processor(self.kind, path)
        self.config = self.model.config
        self._memo = {}

    def __call__(self, text=None, image=None, instruction=None, side="query", **variant) -> np.ndarray:
        key = (text, None if image is None else id(image), instruction, side, tuple(sorted(variant.items())))
        if key not in self._memo:  # the images are module constants, so id() is a stable key
            self._memo[key] = getattr(self, "_" + self.family)(text, image, instruction, side, **variant)
        return self._memo[key].copy()

    # ------------------------------------------------------------------ VLM2Vec

    @staticmethod
    def vlm2vec_prompt(text, has_image, instruction):
        """ref: TIGER-AI-Lab/VLM2Vec src/model/processor.py process_input_text:
        prompt = instruction; if text: prompt += " " + text; if image: prompt = "<|image_pad|> " + prompt.
        No chat template, no <|vision_start|>. Text candidates without an instruction are fed raw
        (src/data/eval_dataset/image_i2t_eval.py data_prepare: cand_text = tgt_text); an absent
        query instruction is "" (same file: qry_inst defaults to [""] * n)."""
        if not has_image and not instruction:
            return text
        prompt = instruction or ""
        if text:
            prompt = prompt + " " + text
        if has_image and IMAGE_PAD not in prompt:
            prompt = IMAGE_PAD + " " + prompt
        return prompt

    def _vlm2vec(self, text, image, instruction, side, positions="1d"):
        prompt = self.vlm2vec_prompt(text, image is not None, instruction)
        if image is not None and min(image.size) < 28:
            image = image.resize((56, 56))  # ref: processor.py Qwen2_VL_process_fn ("rare case in MMEB eval")
        # ref: processor.py Qwen2_VL_process_fn: the checkpoint's processor, its own min/max pixels
        inputs = self.processor(text=[prompt], images=[image] if image is not None else None, return_tensors="pt")
        mm_token_type_ids = inputs.pop("mm_token_type_ids")
        with torch.no_grad():
            if positions == "1d":
                # ref: vendored get_rope_index (see _reference_rope_index): no <|vision_start|>, so 1D
                position_ids = _reference_rope_index(inputs["input_ids"][0], inputs.get("image_grid_thw"), self.config)
                out = self.model(**inputs, position_ids=position_ids, output_hidden_states=True)
            else:  # planted wrong rule: transformers 5's grid positions through mm_token_type_ids
                out = self.model(**inputs, mm_token_type_ids=mm_token_type_ids, output_hidden_states=True)
        # ref: src/model/model.py MMEBModel.encode_input -> hidden_states[-1]; _pooling 'last'
        # (last non-padding token; one unpadded input -> position -1); normalize=True -> L2
        return _unit(out.hidden_states[-1][0, -1])

    # ------------------------------------------------------------------ GME

    GME_DEFAULT_INSTRUCTION = "You are a helpful assistant."

    @classmethod
    def gme_prompt(cls, text, has_image, instruction, is_query=True, endoftext=True):
        """ref: gme_inference.py GmeQwen2VL.embed (Alibaba-NLP/gme-Qwen2-VL-2B-Instruct; copy in
        TIGER-AI-Lab/VLM2Vec src/model/baseline_backbone/gme/gme_inference.py)."""
        if not is_query or instruction is None:
            instruction = cls.GME_DEFAULT_INSTRUCTION
        input_str = (VISION_IMAGE if has_image else "") + (text if text is not None else "")
        suffix = "<|endoftext|>" if endoftext else ""
        return (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{input_str}<|im_end|>\n"
                f"<|im_start|>assistant\n{suffix}")

    def _gme(self, text, image, instruction, side, endoftext=True, positions="1d"):
        prompt = self.gme_prompt(text, image is not None, instruction, side == "query", endoftext)
        if image is not None:
            # ref: gme_inference.fetch_image: RGB, smart_resize(factor 28, 4*28*28 .. 16384*28*28), resize
            image = image.convert("RGB")
            h, w = _smart_resize(image.height, image.width, 28, 4 * 28 * 28, 16384 * 28 * 28)
            image = _pil_resize(image, h, w)
        inputs = self.processor(text=[prompt], images=[image] if image is not None else None, return_tensors="pt")
        with torch.no_grad():
            if positions == "1d":
                # ref: GmeQwen2VL.forward: inputs_embeds = embed_tokens(input_ids); image embeds from
                # base.visual scattered into the <|image_pad|> slots; then base.model (the TEXT
                # decoder in transformers 4.4x) with position_ids=None -> arange(L) for every token
                vl = self.model.model
                embeds = vl.get_input_embeddings()(inputs["input_ids"])
                if image is not None:
                    features = vl.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
                    feats = torch.cat(features.pooler_output)
                    embeds[inputs["input_ids"] == self.config.image_token_id] = feats.to(embeds.dtype)
                out = vl.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
                hidden = out.last_hidden_state
            else:  # planted wrong rule: the full model with transformers 5's M-RoPE
                hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1]
        # ref: GmeQwen2VL.forward: last_hidden_state of the last token (right padding: mask.sum-1), L2
        return _unit(hidden[0, -1])

    # ------------------------------------------------------------------ Qwen3-VL-Embedding

    QWEN3_DEFAULT_INSTRUCTION = "Represent the user's input."

    @classmethod
    def qwen3_system(cls, instruction, add_period=True):
        """ref: QwenLM/Qwen3-VL-Embedding src/models/qwen3_vl_embedding.py
        Qwen3VLEmbedder.format_model_input: strip(); append "." unless the last character's
        Unicode category starts with "P" (any punctuation: . ? ! : ; , ) ] " ' - ...; not symbols
        such as $ + > ); empty -> default_instruction."""
        if instruction:
            instruction = instruction.strip()
            if add_period and instruction and not unicodedata.category(instruction[-1]).startswith("P"):
                instruction = instruction + "."
        return instruction or cls.QWEN3_DEFAULT_INSTRUCTION

    @classmethod
    def qwen3_prompt(cls, text, has_image, instruction, add_period=True):
        """The conversation of format_model_input (system = instruction; user = videos, images,
        texts in that order; nothing at all -> text "NULL") rendered with add_generation_prompt=True
        (Qwen3VLEmbedder._preprocess_inputs) as Qwen3-VL's chat template renders it: system
        '<|im_start|>system\\n' + text + '<|im_end|>\\n'; user '<|im_start|>user\\n' + (an image is
        <|vision_start|><|image_pad|><|vision_end|>, a text its text) + '<|im_end|>\\n'; generation
        prompt '<|im_start|>assistant\\n'. (Template read from the Qwen3-VL-*-Instruct chat template
        in the search corpus; written out here by hand, not via a stored template.)"""
        parts = []
        if has_image:
            parts.append(VISION_IMAGE)
        if text is not None:
            parts.append(text)
        if not parts:
            parts.append("NULL")
        system = cls.qwen3_system(instruction, add_period)
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{''.join(parts)}<|im_end|>\n"
                "<|im_start|>assistant\n")

    def _qwen3_vl_embedding(self, text, image, instruction, side, add_period=True, pooling="last", positions="mrope"):
        prompt = self.qwen3_prompt(text, image is not None, instruction, add_period)
        if image is not None:
            # ref: qwen_vl_utils.fetch_image(image_patch_size=16): to_rgb, smart_resize(factor 32,
            # min_pixels, max_pixels) -> resize; the embedder's defaults MIN_PIXELS = 4*32*32,
            # MAX_PIXELS = 1800*32*32 (qwen3_vl_embedding.py constants)
            image = image.convert("RGB")
            h, w = _smart_resize(image.height, image.width, 32, 4 * 32 * 32, 1800 * 32 * 32)
            image = _pil_resize(image, h, w)
        # ref: _preprocess_inputs: processor(..., do_resize=False); padding right
        inputs = self.processor(text=[prompt], images=[image] if image is not None else None,
                                do_resize=False, return_tensors="pt")
        with torch.no_grad():
            if positions == "mrope":
                # ref: Qwen3VLForEmbedding.forward -> Qwen3VLModel(**processor outputs): transformers'
                # own M-RoPE (in transformers 5 through mm_token_type_ids)
                hidden = self.model.model(**inputs).last_hidden_state
            else:  # planted wrong rule: 1D positions
                inputs.pop("mm_token_type_ids")
                position_ids = _one_d_positions(inputs["input_ids"].shape[1])
                hidden = self.model.model(**inputs, position_ids=position_ids).last_hidden_state
        # ref: Qwen3VLEmbedder._pooling_last: the last attention-mask 1 (one input -> -1); then L2
        index = -1 if pooling == "last" else 0
        return _unit(hidden[0, index])

    # ------------------------------------------------------------------ jina-embeddings-v4

    JINA_IMAGE_PROMPT = "<|im_start|>user\n" + VISION_IMAGE + "Describe the image.<|im_end|>\n"

    def _jina_v4(self, text, image, instruction, side, pooling="mean", positions="mrope", span="inclusive"):
        """ref: jinaai/jina-embeddings-v4 modeling_jina_embeddings_v4.py (the model repo's custom
        code; read from a stored copy in the search corpus)."""
        if instruction is not None:
            raise ValueError("jina-embeddings-v4 has no instructions, only the Query/Passage prefixes")
        if image is not None and text is not None:
            raise ValueError("jina-embeddings-v4 embeds a text or an image, not both")
        if image is not None:
            # ref: JinaEmbeddingsV4Processor.process_images: one image -> this fixed prompt, the
            # processor's own resizing (the checkpoint's min/max pixels)
            inputs = self.processor(text=[self.JINA_IMAGE_PROMPT], images=[image.convert("RGB")], return_tensors="pt")
        else:
            # ref: JinaEmbeddingsV4Processor.process_texts: f"{prefix}: {text}"; encode_text /
            # _validate_encoding_params: prefix "Query" (prompt_name "query", the default) or "Passage"
            prefix = "Query" if side == "query" else "Passage"
            inputs = self.processor(text=[f"{prefix}: {text}"], return_tensors="pt")
        inputs.pop("mm_token_type_ids")
        input_ids = inputs["input_ids"][0]
        if positions == "mrope":
            # ref: get_last_hidden_states: position_ids from self.model.get_rope_index(input_ids,
            # image_grid_thw, attention_mask), passed explicitly (vision_start present -> grid)
            position_ids = _reference_rope_index(input_ids, inputs.get("image_grid_thw"), self.config)
        else:  # planted wrong rule: 1D positions
            position_ids = _one_d_positions(len(input_ids))
        with torch.no_grad():
            out = self.model(**inputs, position_ids=position_ids, output_hidden_states=True)
        hidden = out.hidden_states[-1][0]  # ref: get_last_hidden_states returns hidden_states[-1]
        if pooling == "last":  # planted wrong rule
            pooled = hidden[-1]
        elif image is not None:
            # ref: get_single_vector_embeddings: image_mask = (pos >= vision_start) & (pos <= vision_end),
            # both ends INCLUSIVE; masked mean
            start = int((input_ids == self.config.vision_start_token_id).nonzero()[0])
            end = int((input_ids == self.config.vision_end_token_id).nonzero()[0])
            if span == "exclusive":  # planted wrong rule
                start, end = start + 1, end - 1
            pooled = hidden[start:end + 1].mean(0)
        else:
            # ref: get_single_vector_embeddings, text: mean over the attention mask (all tokens,
            # prefix included)
            pooled = hidden.mean(0)
        return _unit(pooled)  # ref: get_single_vector_embeddings ends with normalize


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def oracle(sharp_checkpoint):
    """oracle(family) -> _Oracle on the right-padded checkpoint (the oracles never pad, and the
    left- and right-padded checkpoints hold the same weights: see test_sharp_checkpoints_share_weights)."""
    cache = {}

    def get(family: str) -> _Oracle:
        if family not in cache:
            cache[family] = _Oracle(family, sharp_checkpoint(FAMILY_KIND[family], "right"))
        return cache[family]

    return get


def _with_matryoshka_dims(path, dims):
    import json
    import shutil

    copy = path.parent / f"{path.name}-mrl{'-'.join(map(str, dims))}"
    if not copy.exists():
        shutil.copytree(path, copy)
        config = json.loads((copy / "config.json").read_text())
        config["matryoshka_dims"] = dims
        (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


@pytest.fixture(scope="session")
def encoder(sharp_checkpoint):
    """encoder(family, padding_side, dim=None) -> mmsearch encoder, loaded once."""
    cache = {}

    def get(family: str, padding_side: str, dim=None):
        import mmsearch

        key = (family, padding_side, dim)
        if key not in cache:
            kwargs = {} if dim is None else {"dim": dim}
            path = sharp_checkpoint(FAMILY_KIND[family], padding_side)
            if dim is not None:  # the checkpoint names its sizes, as jina-v4's config.matryoshka_dims does
                path = _with_matryoshka_dims(path, [dim // 2, dim])
            cache[key] = mmsearch.load_encoder(str(path), family=family, device="cpu", **kwargs)
        return cache[key]

    return get


# ----------------------------------------------------------------------------- the oracles' own rules


def test_sharp_checkpoints_share_weights(sharp_checkpoint):
    for kind in set(FAMILY_KIND.values()):
        left = (sharp_checkpoint(kind, "left") / "model.safetensors").read_bytes()
        right = (sharp_checkpoint(kind, "right") / "model.safetensors").read_bytes()
        assert left == right, kind


def test_vlm2vec_prompt_is_process_input_text():
    p = _Oracle.vlm2vec_prompt
    assert p("a red bus", False, "Find an image.") == "Find an image. a red bus"
    assert p(None, True, "Represent the given image.") == "<|image_pad|> Represent the given image."
    assert p("make it red", True, "Find it:") == "<|image_pad|> Find it: make it red"
    assert p("a red bus", False, None) == "a red bus"
    # no instruction but an image: process_input_text("", ...) keeps the separators
    assert p(None, True, None) == "<|image_pad|> "
    assert p("make it red", True, None) == "<|image_pad|>  make it red"


def test_gme_prompt_and_default_instruction():
    assert _Oracle.gme_prompt("a red bus", True, None) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>a red bus<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
    # documents (is_query=False) always get the default instruction
    assert "Find it." not in _Oracle.gme_prompt("x", False, "Find it.", is_query=False)
    assert "system\nFind it.<|im_end|>" in _Oracle.gme_prompt("x", False, "Find it.", is_query=True)


@pytest.mark.parametrize("instruction, system", [
    (None, "Represent the user's input."),
    ("", "Represent the user's input."),
    ("   ", "Represent the user's input."),
    ("Find an image that matches the given text", "Find an image that matches the given text."),
    ("  Find it.  ", "Find it."),
    ("Find it?", "Find it?"),
    ("Find it:", "Find it:"),
    ("Retrieve the caption (in English)", "Retrieve the caption (in English)"),  # ')' is Pe
    ('Answer with "yes"', 'Answer with "yes"'),  # '"' is Po
    ("Find it -", "Find it -"),  # '-' is Pd
    ("Costs in $", "Costs in $."),  # '$' is Sc, a symbol: a period is added
    ("Rank by score >", "Rank by score >."),  # '>' is Sm
    ("找到图片。", "找到图片。"),  # ideographic full stop is Po
])
def test_qwen3_instruction_punctuation_rule(instruction, system):
    assert _Oracle.qwen3_system(instruction) == system


def test_qwen3_prompt_layout():
    assert _Oracle.qwen3_prompt("make it red", True, None) == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>make it red<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>user\nNULL<|im_end|>" in _Oracle.qwen3_prompt(None, False, None)


def test_qwen3_prompt_matches_the_checkpoint_chat_template(oracle):
    """The tiny qwen3_vl checkpoint's template renders the embedder's conversations the same way."""
    processor = oracle("qwen3_vl_embedding").processor
    tok = processor.tokenizer
    for text, image, instruction in (("a red bus", False, None), ("make it red", True, "Find it"), (None, True, None)):
        content = ([{"type": "image", "image": "x.png"}] if image else []) + (
            [{"type": "text", "text": text}] if text is not None else [])
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": _Oracle.qwen3_system(instruction)}]},
            {"role": "user", "content": content},
        ]
        rendered = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        assert rendered == _Oracle.qwen3_prompt(text, image, instruction)


@pytest.mark.parametrize("family", ("qwen3_vl_embedding", "jina_v4"))
def test_reference_rope_index_equals_transformers_mrope(family, oracle):
    """For prompts with <|vision_start|>, the transcribed reference positions are transformers 5's
    M-RoPE positions; so 'M-RoPE' means the same for the reference and for transformers here."""
    o = oracle(family)
    prompt = o.qwen3_prompt("make it red", True, None) if family == "qwen3_vl_embedding" else o.JINA_IMAGE_PROMPT
    inputs = o.processor(text=[prompt], images=[IMAGES["a"]], return_tensors="pt")
    ours = _reference_rope_index(inputs["input_ids"][0], inputs["image_grid_thw"], o.config)
    theirs, _ = o.model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, _one_d_positions(ours.shape[-1]))  # the image does move positions


def test_vlm2vec_reference_positions_are_one_d(oracle):
    o = oracle("vlm2vec")
    prompt = o.vlm2vec_prompt("make it red", True, "Find it.")
    inputs = o.processor(text=[prompt], images=[IMAGES["a"]], return_tensors="pt")
    ours = _reference_rope_index(inputs["input_ids"][0], inputs["image_grid_thw"], o.config)
    assert torch.equal(ours, _one_d_positions(ours.shape[-1]))


def test_gme_image_grid_follows_its_two_resizes(oracle):
    o = oracle("gme")
    image = IMAGES["a"]  # 200 x 170 -> fetch_image: 196 x 168 -> processor: >= 256 tokens of 28 px
    h, w = _smart_resize(image.height, image.width, 28, 4 * 784, 16384 * 784)
    assert (h, w) == (168, 196)
    resized = _pil_resize(image, h, w)
    inputs = o.processor(text=[o.gme_prompt(None, True, None)], images=[resized], return_tensors="pt")
    gh, gw = _smart_resize(h, w, 28, 256 * 784, 1280 * 784)
    assert inputs["image_grid_thw"][0].tolist() == [1, gh // 14, gw // 14]
    assert (gh // 28) * (gw // 28) >= 256


def test_hidden_states_last_is_the_normed_output(oracle):
    """The references read hidden_states[-1] (VLM2Vec, jina) or last_hidden_state (GME, Qwen3):
    the same tensor, after the final norm, in transformers 5 as in 4.4x."""
    for family in ("vlm2vec", "jina_v4"):
        o = oracle(family)
        inputs = o.processor(text=["Query: a red bus"], return_tensors="pt")
        with torch.no_grad():
            full = o.model(**inputs, output_hidden_states=True).hidden_states[-1]
            base = o.model.model(**inputs).last_hidden_state
        assert torch.allclose(full, base, atol=1e-6)


# ----------------------------------------------------------------------------- planted wrong rules

PLANTED = [
    # family, variant (what the wrong rule changes), the input kinds it must move
    ("vlm2vec", {"positions": "mrope"}, ("image", "image+text")),
    ("gme", {"endoftext": False}, ("text", "image", "image+text")),
    ("gme", {"positions": "mrope"}, ("image", "image+text")),
    ("qwen3_vl_embedding", {"add_period": False}, ("text", "image", "image+text")),
    ("qwen3_vl_embedding", {"pooling": "first"}, ("text", "image", "image+text")),
    ("qwen3_vl_embedding", {"positions": "1d"}, ("image", "image+text")),
    ("jina_v4", {"pooling": "last"}, ("text", "image")),
    ("jina_v4", {"positions": "1d"}, ("image",)),
    ("jina_v4", {"span": "exclusive"}, ("image",)),
]
# an instruction without final punctuation, so qwen3's "." rule applies
PLANTED_INSTRUCTION = {"vlm2vec": "Find an image that matches the given text.",
                       "gme": "Find an image that matches the given text.",
                       "qwen3_vl_embedding": "Find an image that matches the given text",
                       "jina_v4": None}


def _cases_of(family):
    return [c for c in CASES if not (family == "jina_v4" and c == "image_text")]


@pytest.mark.parametrize("family, variant, kinds", PLANTED, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_oracle_rejects_planted_wrong_rule(family, variant, kinds, oracle):
    o = oracle(family)
    instruction = PLANTED_INSTRUCTION[family]
    cosines = {}
    for name in _cases_of(family):
        text, image = CASES[name]
        right = o(text, image, instruction)
        wrong = o(text, image, instruction, **variant)
        cosines[name] = _cos(right, wrong)
        print(f"planted {family:20s} {str(variant):24s} {name:11s} ({KIND_OF_CASE[name]:10s}) cos={cosines[name]:.6f}")
    for name, c in cosines.items():
        if KIND_OF_CASE[name] in kinds:
            assert c < PARITY, f"{family} {variant}: planted rule not detected on {name} (cos {c:.6f})"


def test_oracle_is_deterministic_and_input_sensitive(oracle):
    for family in FAMILIES:
        o = oracle(family)
        vecs = {name: o(*CASES[name]) for name in _cases_of(family)}
        again = getattr(o, "_" + family)(*CASES["image_a"], None, "query")  # recomputed, not memoised
        assert _cos(vecs["image_a"], again) > 1 - 1e-9
        names = list(vecs)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert _cos(vecs[a], vecs[b]) < PARITY, (family, a, b)


# ----------------------------------------------------------------------------- parity with mmsearch

INSTRUCTIONS = {
    "vlm2vec": [None, "Find an image that matches the given text."],
    "gme": [None, "Find an image that matches the given text."],
    # no final punctuation (a "." is added), and a final ")" (Unicode Pe: nothing is added)
    "qwen3_vl_embedding": [None, "Find an image that matches the given text", "Retrieve the caption (in English)"],
    "jina_v4": [None],
}
PARITY_PARAMS = [
    pytest.param(f, pad, ins, id=f"{f}-{pad}-{'noinst' if ins is None else ins[:12]}")
    for f in FAMILIES for pad in ("left", "right") for ins in INSTRUCTIONS[f]
]


def _parity_cases(family, instruction):
    cases = _cases_of(family)
    if family == "vlm2vec" and instruction is None:
        # images without an instruction: see test_vlm2vec_image_without_instruction
        cases = [c for c in cases if CASES[c][1] is None]
    return cases


def _as_input(name, side):
    import mmsearch

    text, image = CASES[name]
    if image is None:
        return text
    if text is None:
        return image
    return mmsearch.Query(text=text, image=image) if side == "query" else mmsearch.Item(id=name, text=text, image=image)


def _check_rows(vecs, names, expected, label):
    vecs = np.asarray(vecs)
    assert vecs.dtype == np.float32 and vecs.shape == (len(names), len(expected[names[0]]))
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    bad = {}
    for row, name in zip(vecs, names):
        c = _cos(row, expected[name])
        if c < PARITY:
            bad[name] = round(c, 6)
    assert not bad, f"{label}: cosine < {PARITY} against the oracle: {bad}"


@pytest.mark.parametrize("family, padding_side, instruction", PARITY_PARAMS)
def test_encode_batched_matches_oracle(family, padding_side, instruction, oracle, encoder):
    o, enc = oracle(family), encoder(family, padding_side)
    sides = ("query", "candidate") if family == "jina_v4" else ("query",)
    for side in sides:
        names = _parity_cases(family, instruction)
        expected = {n: o(*CASES[n], instruction, side) for n in names}
        vecs = enc.encode([_as_input(n, side) for n in names], instruction=instruction, side=side)
        _check_rows(vecs, names, expected, f"{family} batched {padding_side} {side} {instruction!r}")


@pytest.mark.parametrize("family, padding_side, instruction", PARITY_PARAMS)
def test_encode_alone_matches_oracle(family, padding_side, instruction, oracle, encoder):
    o, enc = oracle(family), encoder(family, padding_side)
    sides = ("query", "candidate") if family == "jina_v4" else ("query",)
    for side in sides:
        for name in _parity_cases(family, instruction):
            expected = {name: o(*CASES[name], instruction, side)}
            vecs = enc.encode([_as_input(name, side)], instruction=instruction, side=side)
            _check_rows(vecs, [name], expected, f"{family} alone {padding_side} {side} {instruction!r}")


def test_vlm2vec_image_without_instruction(oracle, encoder):
    """process_input_text with instruction "" keeps its separators: "<|image_pad|> " for an image,
    "<|image_pad|>  text" (two spaces) for image+text (DESIGN §3's join would drop them)."""
    o, enc = oracle("vlm2vec"), encoder("vlm2vec", "right")
    names = ["image_a", "image_text"]
    expected = {n: o(*CASES[n], None) for n in names}
    _check_rows(enc.encode([_as_input(n, "query") for n in names], instruction=None, side="query"),
                names, expected, "vlm2vec image without instruction")


@pytest.mark.parametrize("family", ("qwen3_vl_embedding", "jina_v4"))
@pytest.mark.parametrize("padding_side", ("left", "right"))
def test_encode_matryoshka_truncates_then_renormalises(family, padding_side, oracle, encoder):
    """ref: jina modeling_jina_embeddings_v4.py _process_batches: embeddings[:, :truncate_dim] then
    normalize (truncate_dim must be in config.matryoshka_dims, 128..2048 on the real model).
    Qwen3-VL-Embedding's embedder has no truncation; its README advertises MRL, applied the same way."""
    dim = 32  # the tiny models are 64-d
    o, enc = oracle(family), encoder(family, padding_side, dim=dim)
    assert enc.dim == dim
    names = _cases_of(family)
    expected = {}
    for n in names:
        full = o(*CASES[n])
        expected[n] = full[:dim] / np.linalg.norm(full[:dim])
    _check_rows(enc.encode([_as_input(n, "query") for n in names], side="query"), names, expected,
                f"{family} dim={dim}")


def test_jina_query_and_item_objects_pick_their_sides(oracle, encoder):
    import mmsearch

    o, enc = oracle("jina_v4"), encoder("jina_v4", "right")
    text = CASES["text_long"][0]
    vecs = enc.encode([mmsearch.Query(text=text), mmsearch.Item(id="d1", text=text)])
    assert _cos(vecs[0], o(text, None, None, "query")) >= PARITY  # "Query: " prefix
    assert _cos(vecs[1], o(text, None, None, "candidate")) >= PARITY  # "Passage: " prefix
    assert _cos(vecs[0], vecs[1]) < PARITY
