"""Tiny, randomly initialised Hugging Face checkpoints, built offline, for tests.

Test helpers only: this module builds on production code (`mmsearch.models`), and nothing
in `mmsearch` imports it.

``build_tiny_model(kind, out_dir)`` writes a normal HF directory (``config.json``,
``model.safetensors``, ``tokenizer.json``/``tokenizer_config.json`` and the image
processor config) that loads with ``from_pretrained`` under ``HF_HUB_OFFLINE=1``, so
tests exercise the real loading and encoding path. Same seed, same bytes of weights.

- ``qwen2_vl`` / ``qwen2_5_vl`` / ``qwen3_vl``: ``mmsearch.models.scratch.build_qwen`` at the
  test size (``TEST_SIZE``, DESIGN §8) unless ``size`` says otherwise; that module's
  docstring has the processor layout and how to load a Qwen processor without torchvision.
- ``colqwen2`` / ``colqwen2_5``: transformers' ``ColQwen2ForRetrieval`` around the test-size
  Qwen2-VL / Qwen2.5-VL (``embedding_dim`` ``COLQWEN2_DIM``), with the Qwen tokenizer and image
  processor files (images up to ColQwen2's 768 merged tokens, so the family's own resize decides).
- ``colpali``: transformers' ``ColPaliForRetrieval`` around a test-size PaliGemma (Gemma text
  model, a 56 px SigLIP tower: 16 image tokens), ``embedding_dim`` ``COLQWEN2_DIM``; a Gemma-style
  tokenizer (``<pad>`` 0, ``<eos>``, ``<bos>``, ``<unk>``, ``<image>``) saved through transformers'
  ``ColPaliProcessor``, which adds PaliGemma's location/segmentation tokens and turns off the
  tokenizer's own BOS, as the published ``-hf`` repositories have it.
- ``build_tiny_jina_v4(base_dir, out_dir)``: a tiny Qwen2.5-VL laid out as the
  ``jinaai/jina-embeddings-v4`` repository is (custom-class config, ``multi_vector_projector``
  with a bias, ``adapters/`` with a LoRA pair per task, projector included).
- ``llava_next`` / ``clip`` / ``siglip``: the stock processor's ``save_pretrained``
  (transformers 5 writes ``processor_config.json`` with the image processor nested in it
  plus the processor-level settings: for LLaVA-NeXT ``patch_size``,
  ``vision_feature_select_strategy``, ``num_additional_image_tokens``).

Loading a processor without torchvision (transformers 5.23): ``AutoImageProcessor`` and the
``*ImageProcessor`` names fall back to the PIL classes (``Qwen2VLImageProcessorPil``,
``LlavaNextImageProcessorPil``, ``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``).
``LlavaNextProcessor``, ``CLIPProcessor``, ``SiglipProcessor`` and ``AutoProcessor`` work
as is.

``sharpen_attention(model_dir)`` scales the text model's query/key projections in place: a
random tiny model attends almost uniformly, so a wrong position or prompt rule barely moves
its output until attention is sharpened (DESIGN §8).

Gotchas (transformers 5.23, peft 0.21):

- Qwen3-VL normalises queries and keys per head (``q_norm``/``k_norm``, RMSNorm), which
  undoes any scaling of ``q_proj``/``k_proj``: ``sharpen_attention`` scales those norms too.
- SigLIP pools the last position: tokenize with ``padding="max_length"`` (64).
- ``CLIPModel``/``SiglipModel.get_text_features``/``get_image_features`` return an output
  object whose ``pooler_output`` is the projected embedding (a bare tensor in 4.x).
- Adapters saved before transformers 5 name LM weights ``base_model.model.model.layers.*``;
  peft does not rename them for Qwen2-VL (missing keys, only a warning): pass
  ``key_mapping`` (see ``LEGACY_ADAPTER_KEY_MAPPING`` and ``build_tiny_adapter``).
"""
from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Sequence

from mmsearch.encoders.factory import ADAPTER_KEY_MAPPING
from mmsearch.errors import InputError
from mmsearch.models import scratch
from mmsearch.models.scratch import (PADDING_SIDES, PATCH, QWEN_KINDS, QWEN_SPECIAL_TOKENS, QwenSize, bpe_tokenizer,
                                     check_choice, seeded)
from mmsearch.train.init import copy_processor_files
from mmsearch.train.settings import DEFAULT_LORA_TARGETS

KINDS = QWEN_KINDS + ("llava_next", "clip", "siglip")  # single-vector kinds
COLQWEN_KINDS = {"colqwen2": "qwen2_vl", "colqwen2_5": "qwen2_5_vl"}  # multi-vector kinds -> the VLM inside
ALL_KINDS = KINDS + tuple(COLQWEN_KINDS) + ("colpali",)

LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
GEMMA_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>")  # Gemma's first ids, then PaliGemma's image
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
SIGLIP_SPECIAL_TOKENS = ("<unk>", "</s>")

# Vision-language backbones at test size (DESIGN §8), LLaVA-NeXT's too; benchmarks pass larger `QwenSize`s.
TEST_SIZE = QwenSize(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vision_embed=32, vision_depth=2, vision_heads=2)
# LLaVA-NeXT: a 28 px CLIP tower (2x2 patches + CLS) and 28/56 px tiles.
LLAVA_IMAGE_SIZE = 28
LLAVA_PINPOINTS = [[28, 56], [56, 28], [56, 56]]
# Dual encoders.
DUAL_HIDDEN = 32
DUAL_IMAGE_SIZE = 28
# ColQwen2: token vectors of 32 dimensions (128 on real checkpoints); images up to 768 merged tokens
COLQWEN2_DIM = 32
COLQWEN2_MAX_PIXELS = 768 * 28 * 28
# ColPali: SigLIP at 56 px, patch 14 -> 16 image tokens (448 px, 1024 tokens on the real ones)
COLPALI_IMAGE_SIZE = 56
# jina-v4: the task adapters' rank and alpha (scaling 2, so a wrong scaling shows), the head's size
JINA_TASKS = ("retrieval", "text-matching", "code")
JINA_LORA_R, JINA_LORA_ALPHA = 4, 8.0
JINA_PROJECTOR_DIM = 128

_CORPUS = (
    "a red bus parked on a city street",
    "a small dog running on the grass in the park",
    "two cats sleeping on a blue sofa",
    "a man riding a bicycle down the road",
    "a woman holding an umbrella in the rain",
    "a plate of pasta with tomato sauce and cheese",
    "a green apple and a yellow banana on a table",
    "a white boat sailing on the calm sea",
    "children playing football on a sunny day",
    "a tall building with many glass windows",
    "the quick brown fox jumps over the lazy dog",
    "a black and white photo of an old train station",
    "a red circle next to a blue square",
    "a large green triangle above a small purple star",
    "make it red",
    "change the colour of the car to blue",
    "remove the person from the picture",
    "show the same scene at night",
    "Represent the given image.",
    "Represent the given image with the following question:",
    "Find an image that matches the given text.",
    "Find a caption that describes the given image.",
    "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.",
    "Understand the content of the provided document image.",
    "Identify the object shown in the image.",
    "Given a news image, find the caption that describes it.",
    "What is the colour of the bus? The bus is red.",
    "How many people are in the photo? There are three people.",
    "The document shows a table of numbers and a short title.",
    "one two three four five six seven eight nine ten",
)


# ----------------------------------------------------------------------------- tokenizer


def build_tiny_tokenizer(out_dir=None, *, special_tokens: Sequence[str] = QWEN_SPECIAL_TOKENS, vocab_size: int = 300,
                         **options):
    """A byte-level BPE tokenizer trained in-process on a small built-in English corpus.

    ``special_tokens`` get the first ids, in order; ``vocab_size`` counts the byte
    alphabet plus merges, excluding the special tokens. ``options`` are
    ``mmsearch.models.scratch.bpe_tokenizer``'s: ``padding_side``, ``pad_token`` (default:
    the first special token), ``bos_token``, ``eos_token``, ``unk_token``, ``add_bos_token``,
    ``add_eos_token``, ``model_max_length``. Deterministic. Saved to ``out_dir`` when given.
    """
    check_choice("padding_side", options.get("padding_side", "right"), PADDING_SIDES)
    if vocab_size < 257:
        raise InputError(f"vocab_size={vocab_size!r} is too small; a byte-level BPE needs at least 257")
    special_tokens = tuple(special_tokens)
    tokenizer = bpe_tokenizer(_CORPUS, vocab_size + len(special_tokens), special_tokens, **options)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


_TOKENIZER_SPECS = {
    "qwen2_vl": scratch.QWEN_TOKENIZER,
    # Mistral/Llama style: BOS prepended.
    "llava_next": dict(special_tokens=LLAVA_SPECIAL_TOKENS, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                       unk_token="<unk>", add_bos_token=True),
    # CLIP pools the first EOS, so every text gets one.
    "clip": dict(special_tokens=CLIP_SPECIAL_TOKENS, pad_token="<|endoftext|>", bos_token="<|startoftext|>",
                 eos_token="<|endoftext|>", unk_token="<|endoftext|>", add_bos_token=True, add_eos_token=True,
                 model_max_length=77),
    # SigLIP pools the last position (texts are padded to max_length 64).
    "siglip": dict(special_tokens=SIGLIP_SPECIAL_TOKENS, pad_token="</s>", eos_token="</s>", unk_token="<unk>",
                   add_eos_token=True, model_max_length=64),
    # Gemma: BOS prepended (PaliGemma's processor turns that off when it wraps the tokenizer)
    "colpali": dict(special_tokens=GEMMA_SPECIAL_TOKENS, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                    unk_token="<unk>", add_bos_token=True),
}
for _kind in ("qwen2_5_vl", "qwen3_vl", *COLQWEN_KINDS):
    _TOKENIZER_SPECS[_kind] = _TOKENIZER_SPECS["qwen2_vl"]


# ----------------------------------------------------------------------------- llava_next, clip, siglip


def _llava_next_config(tokenizer):
    from transformers import LlavaNextConfig

    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                  num_hidden_layers=TEST_SIZE.vision_depth, num_attention_heads=2, image_size=LLAVA_IMAGE_SIZE,
                  patch_size=PATCH, projection_dim=32)
    text = dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=TEST_SIZE.hidden,
                intermediate_size=TEST_SIZE.ffn, num_hidden_layers=TEST_SIZE.layers,
                num_attention_heads=TEST_SIZE.heads, num_key_value_heads=TEST_SIZE.kv_heads,
                max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=LLAVA_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(LLAVA_IMAGE_SIZE // PATCH) ** 2,
        tie_word_embeddings=False,
    )


def _dual_text_config(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=DUAL_HIDDEN, intermediate_size=2 * DUAL_HIDDEN,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)


def _dual_vision_config() -> dict:
    return dict(hidden_size=DUAL_HIDDEN, intermediate_size=2 * DUAL_HIDDEN, num_hidden_layers=2,
                num_attention_heads=2, image_size=DUAL_IMAGE_SIZE, patch_size=PATCH)


def _clip_config(tokenizer):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    return CLIPConfig(
        text_config=CLIPTextConfig(**_dual_text_config(tokenizer)),
        vision_config=CLIPVisionConfig(**_dual_vision_config()),
        projection_dim=DUAL_HIDDEN,
    )


def _siglip_config(tokenizer):
    from transformers import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

    # config objects, not dicts: a dict drops bos_token_id=None and gets CLIP's 49406
    return SiglipConfig(
        text_config=SiglipTextConfig(**_dual_text_config(tokenizer)),
        vision_config=SiglipVisionConfig(**_dual_vision_config()),
    )


_CONFIGS = {"llava_next": _llava_next_config, "clip": _clip_config, "siglip": _siglip_config}


def _save_processor(kind: str, tokenizer, out_dir: pathlib.Path) -> None:
    import transformers as tf

    if kind == "llava_next":
        image_processor = tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": LLAVA_IMAGE_SIZE},
            crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE},
            image_grid_pinpoints=LLAVA_PINPOINTS,
        )
        processor = tf.LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # the CLIP tower's CLS token
        )
    elif kind == "clip":
        image_processor = tf.CLIPImageProcessorPil(
            size={"shortest_edge": DUAL_IMAGE_SIZE},
            crop_size={"height": DUAL_IMAGE_SIZE, "width": DUAL_IMAGE_SIZE},
        )
        processor = tf.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        square = {"height": DUAL_IMAGE_SIZE, "width": DUAL_IMAGE_SIZE}
        image_processor = tf.SiglipImageProcessorPil(size=square)
        processor = tf.SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(str(out_dir))


# ----------------------------------------------------------------------------- models


def model_class(kind: str):
    """The transformers class that ``build_tiny_model(kind, ...)`` instantiates."""
    check_choice("kind", kind, ALL_KINDS)
    return scratch.model_class("colqwen2" if kind in COLQWEN_KINDS else kind)


def _build_colqwen(kind: str, out_dir, tokenizer, size: QwenSize, seed: int) -> pathlib.Path:
    from transformers import ColQwen2Config

    vlm_kind = COLQWEN_KINDS[kind]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = ColQwen2Config(vlm_config=scratch.qwen_config(vlm_kind, tokenizer, size), embedding_dim=COLQWEN2_DIM)
    scratch.save_random(model_class(kind), config, out_dir, seed)
    scratch.save_qwen_processor(vlm_kind, tokenizer, out_dir, max_pixels=COLQWEN2_MAX_PIXELS)
    return out_dir


def _build_colpali(out_dir, tokenizer, size: QwenSize, seed: int) -> pathlib.Path:
    import transformers as tf

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_processor = tf.SiglipImageProcessorPil(size={"height": COLPALI_IMAGE_SIZE, "width": COLPALI_IMAGE_SIZE})
    image_processor.image_seq_length = (COLPALI_IMAGE_SIZE // PATCH) ** 2
    processor = tf.ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(str(out_dir))
    tok = processor.tokenizer  # with PaliGemma's added tokens: the vocabulary must cover them
    vision = tf.SiglipVisionConfig(hidden_size=size.vision_embed, intermediate_size=2 * size.vision_embed,
                                   num_hidden_layers=size.vision_depth, num_attention_heads=size.vision_heads,
                                   image_size=COLPALI_IMAGE_SIZE, patch_size=PATCH, projection_dim=size.hidden)
    text = tf.GemmaConfig(vocab_size=len(tok), hidden_size=size.hidden, intermediate_size=size.ffn,
                          num_hidden_layers=size.layers, num_attention_heads=size.heads,
                          num_key_value_heads=size.kv_heads, head_dim=size.hidden // size.heads,
                          max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id)
    vlm = tf.PaliGemmaConfig(vision_config=vision, text_config=text, image_token_id=processor.image_token_id,
                             projection_dim=size.hidden, hidden_size=size.hidden)
    scratch.save_random(model_class("colpali"), tf.ColPaliConfig(vlm_config=vlm, embedding_dim=COLQWEN2_DIM),
                        out_dir, seed)
    return out_dir


def build_tiny_model(kind: str, out_dir, *, seed: int = 0, padding_side: str = "right",
                     size: "QwenSize | None" = None) -> pathlib.Path:
    """Build a tiny random ``kind`` checkpoint (one of ``ALL_KINDS``) in ``out_dir``; return its path.

    The directory holds config, safetensors weights, tokenizer (saved with
    ``padding_side``) and image processor config; see the module docstring. ``size``
    (Qwen, ColQwen and ColPali kinds only; default ``TEST_SIZE``) builds a larger model, as benchmarks do.
    """
    check_choice("kind", kind, ALL_KINDS)
    check_choice("padding_side", padding_side, PADDING_SIDES)
    tokenizer = build_tiny_tokenizer(padding_side=padding_side, **_TOKENIZER_SPECS[kind])
    if kind in QWEN_KINDS:
        return scratch.build_qwen(kind, out_dir, tokenizer, size=size or TEST_SIZE, seed=seed)
    if kind in COLQWEN_KINDS:
        return _build_colqwen(kind, out_dir, tokenizer, size or TEST_SIZE, seed)
    if kind == "colpali":
        return _build_colpali(out_dir, tokenizer, size or TEST_SIZE, seed)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch.save_random(model_class(kind), _CONFIGS[kind](tokenizer), out_dir, seed)
    _save_processor(kind, tokenizer, out_dir)
    return out_dir


# ----------------------------------------------------------------------------- jina-embeddings-v4

_JINA_LM_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _jina_lora(text: dict, seed: int) -> dict:
    """task -> {module (legacy name): (A [r, in], B [out, r])}, seeded per task; the projector too."""
    import torch

    hidden, ffn = text["hidden_size"], text["intermediate_size"]
    kv_dim = hidden // text["num_attention_heads"] * text["num_key_value_heads"]
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv_dim, hidden),
              "self_attn.v_proj": (kv_dim, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn)}
    shapes = {f"model.layers.{i}.{t}": shapes[t] for i in range(text["num_hidden_layers"]) for t in _JINA_LM_TARGETS}
    shapes["multi_vector_projector"] = (JINA_PROJECTOR_DIM, hidden)
    out = {}
    for t, task in enumerate(JINA_TASKS):
        g = torch.Generator().manual_seed(seed + 100 + t)
        out[task] = {m: (torch.randn(JINA_LORA_R, i, generator=g) * 0.05,
                         torch.randn(o, JINA_LORA_R, generator=g) * 0.05) for m, (o, i) in shapes.items()}
    return out


def build_tiny_jina_v4(base_dir, out_dir, *, seed: int = 0) -> pathlib.Path:
    """The tiny Qwen2.5-VL in ``base_dir`` (``build_tiny_model("qwen2_5_vl", ...)``, sharpened or
    not) laid out in ``out_dir`` as ``jinaai/jina-embeddings-v4`` is: config.json naming the
    authors' classes with ``task_names``/``matryoshka_dims``; the backbone weights (legacy names)
    plus a top-level ``multi_vector_projector`` (``JINA_PROJECTOR_DIM``, non-zero bias);
    ``adapters/`` with one peft LoRA holding an A/B pair per task (``lora_A.<task>.weight``, r 4,
    alpha 8) on every text linear layer and on the projector. No custom code files."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base_dir, out_dir = pathlib.Path(base_dir), pathlib.Path(out_dir)
    if _base_kind(base_dir) != "qwen2_5_vl":
        raise InputError(f"base_dir={str(base_dir)!r} must be a qwen2_5_vl checkpoint (jina-v4's backbone)")
    shutil.copytree(base_dir, out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    config.update({"architectures": ["JinaEmbeddingsV4Model"], "task_names": list(JINA_TASKS),
                   "auto_map": {"AutoModel": "modeling_jina_embeddings_v4.JinaEmbeddingsV4Model"},
                   "matryoshka_dims": [128, 256, 512, 1024, 2048], "truncate_dim": None,
                   "multi_vector_projector_dim": JINA_PROJECTOR_DIM, "single_vector_pool_strategy": "mean"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(str(out_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(seed + 7)
    hidden = config["text_config"]["hidden_size"]
    weights["multi_vector_projector.weight"] = torch.randn(JINA_PROJECTOR_DIM, hidden, generator=g) * 0.05
    weights["multi_vector_projector.bias"] = torch.randn(JINA_PROJECTOR_DIM, generator=g) * 0.05
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    adapters = out_dir / "adapters"
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": JINA_LORA_R, "lora_alpha": JINA_LORA_ALPHA, "lora_dropout": 0.0,
        "target_modules": "(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
                          "|.*(single_vector_projector|multi_vector_projector).*$)",
        "use_rslora": False, "use_dora": False, "bias": "none"}, indent=2))
    tensors = {f"base_model.model.{module}.lora_{side}.{task}.weight": t.contiguous()
               for task, pairs in _jina_lora(config["text_config"], seed).items()
               for module, ab in pairs.items() for side, t in zip("AB", ab)}
    save_file(tensors, str(adapters / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out_dir


# ----------------------------------------------------------------------------- sharpening

# The text model's attention queries and keys, as named on disk by any kind here (Qwen
# "model.layers.*" / "model.language_model.layers.*", LLaVA-NeXT "language_model.model.*",
# CLIP/SigLIP "text_model.*"); vision towers are excluded by name. q_norm/k_norm are
# Qwen3's per-head RMSNorms after the projections: they cancel a scaled projection, so their
# weights carry the factor as well.
_QK_PARAM = re.compile(r"\.self_attn\.(q_proj|k_proj)\.(weight|bias)$|\.self_attn\.(q_norm|k_norm)\.weight$")
_VISION_PARAM = re.compile(r"(^|\.)(visual|vision_tower|vision_model|multi_modal_projector)\.")


def _text_qk_keys(names) -> list:
    return [n for n in names if _QK_PARAM.search(n) and not _VISION_PARAM.search(n)]


def sharpen_attention(model_dir, factor: float = 6.0) -> pathlib.Path:
    """Multiply the text model's attention query and key projections (weights and biases) by
    ``factor``, in place: same files, other tensors untouched. Returns ``model_dir``.

    Attention logits then grow by about ``factor**2``, so a random tiny model stops
    attending almost uniformly and a wrong position or prompt rule changes its embeddings
    (DESIGN §8). Where the text attention normalises queries and keys after the projection
    (Qwen3-VL's ``q_norm``/``k_norm``), those norm weights are multiplied as well, since the
    norm would otherwise undo the scaling.
    """
    import math

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise InputError(f"factor={factor!r} is not valid; expected a positive finite number")
    model_dir = pathlib.Path(model_dir)
    files = sorted(p for p in model_dir.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if not files:
        raise InputError(
            f"model_dir={str(model_dir)!r} has no *.safetensors weights; build it with build_tiny_model first"
        )
    scaled = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            weights = {name: f.get_tensor(name) for name in f.keys()}
        keys = _text_qk_keys(weights)
        if not keys:
            continue
        for name in keys:
            weights[name] = (weights[name].to(torch.float64) * factor).to(weights[name].dtype).contiguous()
        save_file(weights, str(path), metadata=metadata)
        scaled += len(keys)
    if not scaled:
        raise InputError(f"model_dir={str(model_dir)!r} has no text attention q_proj/k_proj weights to sharpen")
    return model_dir


# ----------------------------------------------------------------------------- adapters

_ADAPTER_BASE_KINDS = ("qwen2_vl", "qwen2_5_vl")
# For PeftModel.from_pretrained(..., key_mapping=...): transformers-4 adapter keys (after
# peft strips "base_model.model.") -> transformers-5 module paths. A no-op on new keys.
LEGACY_ADAPTER_KEY_MAPPING = ADAPTER_KEY_MAPPING["qwen2_vl"]  # one definition, in the encoder


def _rename_to_legacy_keys(path: pathlib.Path) -> None:
    from safetensors.torch import load_file, save_file

    new = "base_model.model.model.language_model."
    weights = {k.replace(new, "base_model.model.model.", 1): v for k, v in load_file(str(path)).items()}
    save_file(weights, str(path), metadata={"format": "pt"})


def _base_kind(base_dir: pathlib.Path) -> str:
    config_path = base_dir / "config.json"
    if not config_path.is_file():
        raise InputError(
            f"base_dir={str(base_dir)!r} has no config.json; build it with build_tiny_model first"
        )
    kind = json.loads(config_path.read_text()).get("model_type")
    if kind not in _ADAPTER_BASE_KINDS:
        raise InputError(
            f"base model_type={kind!r} in {str(base_dir)!r} is not supported for adapters; "
            f"expected one of {list(_ADAPTER_BASE_KINDS)}"
        )
    return kind


def build_tiny_adapter(
    base_dir, out_dir, *, seed: int = 0, r: int = 4, legacy_keys: bool = False
) -> pathlib.Path:
    """Write a LoRA adapter-only checkpoint for the tiny Qwen2-VL/Qwen2.5-VL in ``base_dir``.

    LoRA weights are random and non-zero (``init_lora_weights=False``, seeded), so the
    merged model differs from the base. ``base_model_name_or_path`` is the absolute
    ``base_dir``; tokenizer and processor files are copied along, as in VLM2Vec repos.

    ``legacy_keys=True`` names the weights as peft did under transformers 4
    (``base_model.model.model.layers.*``), the layout of adapters trained before
    transformers 5 (its module path is ``model.language_model.layers.*``). peft 0.21
    does not rename those for Qwen2-VL: load them with
    ``PeftModel.from_pretrained(base, path, key_mapping=LEGACY_ADAPTER_KEY_MAPPING)``.
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise InputError(f"r={r!r} is not a valid LoRA rank; expected a positive int")
    base_dir = pathlib.Path(base_dir).resolve()
    kind = _base_kind(base_dir)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = model_class(kind).from_pretrained(str(base_dir))
    lora = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=DEFAULT_LORA_TARGETS,
        init_lora_weights=False,
    )
    with seeded(seed):
        model = get_peft_model(base, lora)
    # written into adapter_config.json; loaders resolve the base from it
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(str(out_dir))
    if legacy_keys:
        _rename_to_legacy_keys(out_dir / "adapter_model.safetensors")
    copy_processor_files(base_dir, out_dir)
    return out_dir
