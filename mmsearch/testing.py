"""Tiny, randomly initialised Hugging Face checkpoints, built offline, for tests.

``build_tiny_model(kind, out_dir)`` writes a normal HF directory (``config.json``,
``model.safetensors``, ``tokenizer.json``/``tokenizer_config.json`` and the image
processor config) that loads with ``from_pretrained`` under ``HF_HUB_OFFLINE=1``, so
tests exercise the real loading and encoding path. Same seed, same bytes of weights.

On-disk layout of the processor part:

- ``qwen2_vl`` / ``qwen2_5_vl`` / ``qwen3_vl``: ``preprocessor_config.json`` as on the Hub
  (flat image processor dict with ``min_pixels``/``max_pixels`` and ``processor_class``); no
  video processor config, as in the original Qwen2-VL repos (``AutoVideoProcessor`` falls
  back to ``preprocessor_config.json`` when torchvision is present). ``qwen3_vl`` has
  Qwen3-VL's patch 16 (image factor 32 with merge 2), its 0.5/0.5 normalisation, interleaved
  M-RoPE, one DeepStack merger, and a small hand-written chat template
  (``chat_template.jinja``) that renders system/user turns, images, videos, text and the
  generation prompt as Qwen3-VL's does. transformers 5 maps its image processor to
  ``Qwen2VLImageProcessorPil`` without torchvision.
- ``llava_next`` / ``clip`` / ``siglip``: the stock processor's ``save_pretrained``
  (transformers 5 writes ``processor_config.json`` with the image processor nested in it
  plus the processor-level settings: for LLaVA-NeXT ``patch_size``,
  ``vision_feature_select_strategy``, ``num_additional_image_tokens``).

Loading a processor without torchvision (transformers 5.23): ``AutoImageProcessor`` and the
``*ImageProcessor`` names fall back to the PIL classes (``Qwen2VLImageProcessorPil``,
``LlavaNextImageProcessorPil``, ``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``).
``LlavaNextProcessor``, ``CLIPProcessor``, ``SiglipProcessor`` and ``AutoProcessor`` work
as is. ``Qwen2VLProcessor``/``Qwen2_5_VLProcessor``/``Qwen3VLProcessor`` do not: the
``video_processor`` slot is type-checked against ``VideoProcessorMixin``, which needs
torchvision, even when passed ``None``. What works is a subclass whose ``__init__`` has no ``video_processor`` parameter
(processor attributes are read from the ``__init__`` signature)::

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    processor = ImageOnlyQwen2VLProcessor.from_pretrained(model_dir)

``sharpen_attention(model_dir)`` scales the text model's query/key projections in place: a
random tiny model attends almost uniformly, so a wrong position or prompt rule barely moves
its output until attention is sharpened (DESIGN §8).

Gotchas (transformers 5.23, peft 0.21):

- Pass everything the Qwen processor returns to the model: ``mm_token_type_ids`` drives
  M-RoPE. Without it Qwen2-VL raises, but Qwen2.5-VL silently computes other positions.
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

import contextlib
import dataclasses
import json
import pathlib
import re
import shutil
from collections.abc import Iterator, Sequence

from mmsearch.encoders.factory import ADAPTER_KEY_MAPPING
from mmsearch.errors import InputError

KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_next", "clip", "siglip")
QWEN_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
SIGLIP_SPECIAL_TOKENS = ("<unk>", "</s>")

PADDING_SIDES = ("left", "right")

# Vision-language backbones (DESIGN §8).
HIDDEN = 64
TEXT_LAYERS = 2
VISION_DEPTH = 2


@dataclasses.dataclass(frozen=True)
class QwenSize:
    """Sizes of a Qwen2-VL/Qwen2.5-VL build; the defaults are the test-sized model.
    Benchmarks and the trainer use larger ones (e.g. hidden 192, 3 layers, vision 128 x 3)."""

    hidden: int = HIDDEN
    layers: int = TEXT_LAYERS
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 2 * HIDDEN
    vision_embed: int = 32
    vision_depth: int = VISION_DEPTH
    vision_heads: int = 2
PATCH = 14
MERGE = 2
# Qwen images: 56*56 .. 112*112 pixels, i.e. 1 to 16 merged image tokens.
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 112 * 112
# Qwen3-VL: patch 16, so one merged token is 32x32 px; 64*64 .. 128*128 px = 4 to 16 tokens.
QWEN3_PATCH = 16
QWEN3_MIN_PIXELS = 64 * 64
QWEN3_MAX_PIXELS = 128 * 128
QWEN3_IMAGE_MEAN = (0.5, 0.5, 0.5)  # Qwen3-VL normalises to [-1, 1], not with CLIP's statistics
QWEN3_IMAGE_STD = (0.5, 0.5, 0.5)
# A square grid of learned vision position embeddings, resampled to each image's grid.
QWEN3_VISION_POSITIONS = 8 * 8
# Renders system and user turns, images, videos, text and the generation prompt as
# Qwen3-VL's own template does (<|im_start|>role\n...<|im_end|>\n; an image is
# <|vision_start|><|image_pad|><|vision_end|>). Hand-written; no tools, no thinking.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for item in message.content %}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' or 'video' in item %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# LLaVA-NeXT: a 28 px CLIP tower (2x2 patches + CLS) and 28/56 px tiles.
LLAVA_IMAGE_SIZE = 28
LLAVA_PINPOINTS = [[28, 56], [56, 28], [56, 56]]
# Dual encoders.
DUAL_HIDDEN = 32
DUAL_IMAGE_SIZE = 28

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


def _check_choice(name: str, value, options: Sequence) -> None:
    if value not in options:
        raise InputError(f"{name}={value!r} is not valid; expected one of {list(options)}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block, then restore the caller's RNG state (no global side effect)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- tokenizer


def _train_bpe(special_tokens: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        # the full byte alphabet, so any text encodes without an unknown token
        vocab_size=vocab_size + len(special_tokens),
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return tokenizer


def build_tiny_tokenizer(
    out_dir=None,
    *,
    special_tokens: Sequence[str] = QWEN_SPECIAL_TOKENS,
    vocab_size: int = 300,
    padding_side: str = "right",
    pad_token: str | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    unk_token: str | None = None,
    add_bos_token: bool = False,
    add_eos_token: bool = False,
    model_max_length: int = 2048,
):
    """A byte-level BPE tokenizer trained in-process on a small built-in English corpus.

    ``special_tokens`` get the first ids, in order; ``vocab_size`` counts the byte
    alphabet plus merges, excluding the special tokens. ``pad_token`` defaults to the
    first special token. Deterministic. Saved to ``out_dir`` when given.
    """
    from transformers import PreTrainedTokenizerFast

    _check_choice("padding_side", padding_side, PADDING_SIDES)
    if vocab_size < 257:
        raise InputError(f"vocab_size={vocab_size!r} is too small; a byte-level BPE needs at least 257")
    special_tokens = tuple(special_tokens)
    if not special_tokens:
        raise InputError("special_tokens is empty; at least a pad token is needed")
    pad_token = special_tokens[0] if pad_token is None else pad_token
    named = {"pad_token": pad_token, "bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token}
    named = {k: v for k, v in named.items() if v is not None}
    for key, token in named.items():
        _check_choice(key, token, special_tokens)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(special_tokens, vocab_size),
        # padding_side must be given here: a later assignment is not saved
        padding_side=padding_side,
        add_bos_token=add_bos_token,
        add_eos_token=add_eos_token,
        model_max_length=model_max_length,
        **named,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


_TOKENIZER_SPECS = {
    # Qwen2-VL: no BOS/EOS appended; pad is <|endoftext|>, eos <|im_end|>.
    "qwen2_vl": dict(special_tokens=QWEN_SPECIAL_TOKENS, pad_token="<|endoftext|>", eos_token="<|im_end|>"),
    # Mistral/Llama style: BOS prepended.
    "llava_next": dict(
        special_tokens=LLAVA_SPECIAL_TOKENS,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
    ),
    # CLIP pools the first EOS, so every text gets one.
    "clip": dict(
        special_tokens=CLIP_SPECIAL_TOKENS,
        pad_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        add_bos_token=True,
        add_eos_token=True,
        model_max_length=77,
    ),
    # SigLIP pools the last position (texts are padded to max_length 64).
    "siglip": dict(
        special_tokens=SIGLIP_SPECIAL_TOKENS,
        pad_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_eos_token=True,
        model_max_length=64,
    ),
}
_TOKENIZER_SPECS["qwen2_5_vl"] = _TOKENIZER_SPECS["qwen3_vl"] = _TOKENIZER_SPECS["qwen2_vl"]


def _token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


# ----------------------------------------------------------------------------- configs


def _qwen_text_config(tokenizer, size: QwenSize) -> dict:
    head_dim = size.hidden // size.heads
    half = head_dim // 2
    # the real checkpoints split head_dim/2 as 1/4, 3/8, 3/8 (16, 24, 24 of 64)
    mrope_section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        bos_token_id=_token_id(tokenizer, "<|endoftext|>"),
        eos_token_id=_token_id(tokenizer, "<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _qwen_config(kind: str, tokenizer, size: QwenSize):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    vision_common = dict(
        depth=size.vision_depth, num_heads=size.vision_heads, patch_size=PATCH, spatial_merge_size=MERGE,
        temporal_patch_size=2
    )
    if kind == "qwen2_vl":
        cls = Qwen2VLConfig
        vision = dict(vision_common, embed_dim=size.vision_embed, mlp_ratio=2, hidden_size=size.hidden)
    else:
        cls = Qwen2_5_VLConfig
        # window of 56 px = 2x2 merged tokens; the last block attends fully, the others windowed
        vision = dict(
            vision_common,
            hidden_size=size.vision_embed,
            intermediate_size=2 * size.vision_embed,
            out_hidden_size=size.hidden,
            window_size=56,
            fullatt_block_indexes=[size.vision_depth - 1],
        )
    return cls(
        text_config=_qwen_text_config(tokenizer, size),
        vision_config=vision,
        tie_word_embeddings=False,
        **_qwen_vision_token_ids(tokenizer),
    )


def _qwen_vision_token_ids(tokenizer) -> dict:
    return dict(image_token_id=_token_id(tokenizer, "<|image_pad|>"),
                video_token_id=_token_id(tokenizer, "<|video_pad|>"),
                vision_start_token_id=_token_id(tokenizer, "<|vision_start|>"),
                vision_end_token_id=_token_id(tokenizer, "<|vision_end|>"))


def _qwen3_config(tokenizer, size: QwenSize):
    from transformers import Qwen3VLConfig

    head_dim = size.hidden // size.heads
    half = head_dim // 2
    # Qwen3-VL interleaves the sections (T H W T H W ...): H takes dims 1, 4, 7, ... and W
    # 2, 5, 8, ... of head_dim/2, so 3 * section must fit; the real split is 24/20/20 of 64
    spatial = (half * 5) // 16
    mrope_section = [half - 2 * spatial, spatial, spatial]
    text = _qwen_text_config(tokenizer, size)
    text.update(
        head_dim=head_dim,  # Qwen3VLTextConfig defaults to 128
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section,
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_embed,
        intermediate_size=2 * size.vision_embed,
        num_heads=size.vision_heads,
        patch_size=QWEN3_PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=2,
        out_hidden_size=size.hidden,
        num_position_embeddings=QWEN3_VISION_POSITIONS,
        # DeepStack: features after vision block 0 are added to the image positions' hidden
        # states after text layer 0 (the real models feed 3 blocks, e.g. 8/16/24 of 27, into
        # the first 3 text layers)
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=False,
        **_qwen_vision_token_ids(tokenizer),
    )


def _llava_next_config(tokenizer):
    from transformers import LlavaNextConfig

    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=VISION_DEPTH,
        num_attention_heads=2,
        image_size=LLAVA_IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=32,
    )
    text = dict(
        model_type="mistral",
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=_token_id(tokenizer, "<image>"),
        image_grid_pinpoints=LLAVA_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(LLAVA_IMAGE_SIZE // PATCH) ** 2,
        tie_word_embeddings=False,
    )


def _dual_text_config(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=DUAL_HIDDEN,
        intermediate_size=2 * DUAL_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _dual_vision_config() -> dict:
    return dict(
        hidden_size=DUAL_HIDDEN,
        intermediate_size=2 * DUAL_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=DUAL_IMAGE_SIZE,
        patch_size=PATCH,
    )


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


# ----------------------------------------------------------------------------- processors


_QWEN_PROCESSOR_CLASSES = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}


def _save_qwen_image_processor(kind: str, out_dir: pathlib.Path) -> None:
    from transformers import Qwen2VLImageProcessorPil

    if kind == "qwen3_vl":
        min_pixels, max_pixels, patch = QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS, QWEN3_PATCH
        extra = dict(image_mean=list(QWEN3_IMAGE_MEAN), image_std=list(QWEN3_IMAGE_STD))
    else:
        min_pixels, max_pixels, patch, extra = QWEN_MIN_PIXELS, QWEN_MAX_PIXELS, PATCH, {}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch,
        merge_size=MERGE,
        temporal_patch_size=2,
        **extra,
    )
    image_processor.save_pretrained(str(out_dir))
    # as on the Hub: min/max_pixels spelled out (older transformers read only these), and
    # processor_class so the stock AutoProcessor finds the processor
    path = out_dir / "preprocessor_config.json"
    config = json.loads(path.read_text())
    config.update(min_pixels=min_pixels, max_pixels=max_pixels, processor_class=_QWEN_PROCESSOR_CLASSES[kind])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _save_processor(kind: str, tokenizer, out_dir: pathlib.Path) -> None:
    import transformers as tf

    if kind in QWEN_KINDS:
        if kind == "qwen3_vl":
            tokenizer.chat_template = QWEN3_CHAT_TEMPLATE  # saved as chat_template.jinja
        tokenizer.save_pretrained(str(out_dir))
        _save_qwen_image_processor(kind, out_dir)
        return
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

_MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
}


def model_class(kind: str):
    """The transformers class that ``build_tiny_model(kind, ...)`` instantiates."""
    import transformers

    _check_choice("kind", kind, KINDS)
    return getattr(transformers, _MODEL_CLASSES[kind])


def _config(kind: str, tokenizer, size: QwenSize):
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        return _qwen_config(kind, tokenizer, size)
    if kind == "qwen3_vl":
        return _qwen3_config(tokenizer, size)
    if kind == "llava_next":
        return _llava_next_config(tokenizer)
    if kind == "clip":
        return _clip_config(tokenizer)
    return _siglip_config(tokenizer)


def build_tiny_model(kind: str, out_dir, *, seed: int = 0, padding_side: str = "right",
                     size: "QwenSize | None" = None) -> pathlib.Path:
    """Build a tiny random ``kind`` checkpoint (one of ``KINDS``) in ``out_dir``; return its path.

    The directory holds config, safetensors weights, tokenizer (saved with
    ``padding_side``) and image processor config; see the module docstring.
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("padding_side", padding_side, PADDING_SIDES)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(padding_side=padding_side, **_TOKENIZER_SPECS[kind])
    config = _config(kind, tokenizer, size or QwenSize())
    with _seeded(seed):
        model = model_class(kind)(config)
    model.eval()
    model.save_pretrained(str(out_dir))
    _save_processor(kind, tokenizer, out_dir)
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

# LoRA on the language model's attention and MLP projections only. Qwen2-VL's vision
# tower names its layers qkv/proj/fc1/fc2, but Qwen2.5-VL's vision MLP reuses
# gate/up/down_proj, hence the explicit exclusion of "visual".
_LORA_TARGETS = r"^(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
_ADAPTER_BASE_KINDS = ("qwen2_vl", "qwen2_5_vl")
# Files a VLM2Vec adapter repo ships besides the adapter itself.
_PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)


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
        target_modules=_LORA_TARGETS,
        init_lora_weights=False,
    )
    with _seeded(seed):
        model = get_peft_model(base, lora)
    # written into adapter_config.json; loaders resolve the base from it
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(str(out_dir))
    if legacy_keys:
        _rename_to_legacy_keys(out_dir / "adapter_model.safetensors")
    for name in _PROCESSOR_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    return out_dir
