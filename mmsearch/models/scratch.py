"""Qwen-VL checkpoints with random weights, of any size, with a byte-level BPE trained in-process.

`build_qwen(kind, out, tokenizer, size=..., seed=...)` writes an ordinary Hugging Face
directory (`config.json`, `model.safetensors`, tokenizer files, `preprocessor_config.json`)
that `load_encoder` and `from_pretrained` load offline; same seed, same bytes of weights.
`mmsearch train --scratch` starts from one (`mmsearch.train.init`), and `mmsearch.testing`
builds its tiny test checkpoints with it. `QwenSize` is the one definition of the sizes;
its defaults are the shipped mmsearch-tiny's (`mmsearch/models/tiny/`).

The image processor is written as on the Hub: a flat `preprocessor_config.json` with
`min_pixels`/`max_pixels` spelled out and `processor_class`, no video processor config
(`AutoVideoProcessor` falls back to `preprocessor_config.json` when torchvision is present).
`qwen3_vl` has Qwen3-VL's patch 16 (one merged token is 32x32 px), its 0.5/0.5
normalisation, interleaved M-RoPE, one DeepStack merger and a small hand-written chat
template. Without torchvision (transformers 5.23), `Qwen2VLProcessor` and its siblings
refuse to build, since their `video_processor` slot is type-checked even when `None`; a
subclass whose `__init__` has no `video_processor` parameter works::

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

Pass everything the processor returns to the model: `mm_token_type_ids` drives M-RoPE
(Qwen2-VL raises without it, Qwen2.5-VL silently computes other positions).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from ..errors import InputError

QWEN_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PADDING_SIDES = ("left", "right")

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2-VL's: no BOS/EOS appended; pad is <|endoftext|>, eos <|im_end|>.
QWEN_TOKENIZER = dict(special_tokens=QWEN_SPECIAL_TOKENS, pad_token="<|endoftext|>", eos_token="<|im_end|>")

PATCH = 14
MERGE = 2
# Qwen images: 56*56 .. 112*112 pixels by default, i.e. 1 to 16 merged image tokens
QWEN_MIN_SIDE = 56  # the smallest image Qwen's processor makes: 2x2 merged patches of 14 px
QWEN_MIN_PIXELS = QWEN_MIN_SIDE * QWEN_MIN_SIDE
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
_PROCESSOR_CLASSES = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                      "qwen3_vl": "Qwen3VLProcessor"}


@dataclass(frozen=True)
class QwenSize:
    """Sizes of a Qwen-VL built from scratch; the defaults are mmsearch-tiny's."""

    hidden: int = 192
    layers: int = 3
    heads: int = 6
    kv_heads: int = 2
    ffn: int = 512
    vision_embed: int = 128
    vision_depth: int = 3
    vision_heads: int = 2

    def __post_init__(self) -> None:
        for f in fields(QwenSize):  # a subclass checks its own fields
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{f.name}={value!r}: expected an int >= 1")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise InputError(f"hidden={self.hidden}, heads={self.heads}, kv_heads={self.kv_heads}: hidden must be "
                             f"divisible by heads and heads by kv_heads")


def check_choice(name: str, value, options: Sequence) -> None:
    if value not in options:
        raise InputError(f"{name}={value!r} is not valid; expected one of {list(options)}")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block, then restore the caller's RNG state (no global side effect)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def model_class(kind: str):
    """The transformers class of a `kind` checkpoint (`mmsearch.encoders.factory.MODEL_CLASSES`)."""
    import transformers

    from ..encoders.factory import MODEL_CLASSES

    check_choice("kind", kind, tuple(MODEL_CLASSES))
    return getattr(transformers, MODEL_CLASSES[kind])


def save_random(model_cls, config, out: Path, seed: int) -> None:
    """`model_cls(config)` with weights drawn under `seed`, saved to `out`."""
    with seeded(seed):
        net = model_cls(config)
    net.save_pretrained(str(out))


# ----------------------------------------------------------------------------- tokenizer


def bpe_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str], *,
                  padding_side: str = "right", pad_token: Optional[str] = None, bos_token: Optional[str] = None,
                  eos_token: Optional[str] = None, unk_token: Optional[str] = None, add_bos_token: bool = False,
                  add_eos_token: bool = False, model_max_length: int = 2048):
    """A byte-level BPE of `vocab_size` tokens (the byte alphabet, merges and the special
    tokens, which get the first ids in order) trained on `texts`; deterministic.
    `pad_token` defaults to the first special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    check_choice("padding_side", padding_side, PADDING_SIDES)
    special_tokens = tuple(special_tokens)
    if not special_tokens:
        raise InputError("special_tokens is empty; at least a pad token is needed")
    pad_token = special_tokens[0] if pad_token is None else pad_token
    named = {"pad_token": pad_token, "bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token}
    named = {k: v for k, v in named.items() if v is not None}
    for key, token in named.items():
        check_choice(key, token, special_tokens)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text encodes without an unknown token
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        padding_side=padding_side,  # must be given here: a later assignment is not saved
        add_bos_token=add_bos_token,
        add_eos_token=add_eos_token,
        model_max_length=model_max_length,
        **named,
    )


def qwen_tokenizer(texts: Iterable[str], vocab_size: int, *, padding_side: str = "right"):
    """Qwen2-VL's special tokens and conventions over a byte-level BPE trained on `texts`."""
    return bpe_tokenizer(texts, vocab_size, padding_side=padding_side, **QWEN_TOKENIZER)


# ----------------------------------------------------------------------------- configs


def _token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _text_config(tokenizer, size: QwenSize) -> dict:
    half = size.hidden // size.heads // 2
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
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _qwen2_config(kind: str, tokenizer, size: QwenSize):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    common = dict(depth=size.vision_depth, num_heads=size.vision_heads, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=2)
    if kind == "qwen2_vl":
        cls = Qwen2VLConfig
        vision = dict(common, embed_dim=size.vision_embed, mlp_ratio=2, hidden_size=size.hidden)
    else:
        cls = Qwen2_5_VLConfig
        # window of 56 px = 2x2 merged tokens; the last block attends fully, the others windowed
        vision = dict(common, hidden_size=size.vision_embed, intermediate_size=2 * size.vision_embed,
                      out_hidden_size=size.hidden, window_size=56, fullatt_block_indexes=[size.vision_depth - 1])
    return cls(text_config=_text_config(tokenizer, size), vision_config=vision, tie_word_embeddings=False,
               **_token_ids(tokenizer))


def _qwen3_config(tokenizer, size: QwenSize):
    from transformers import Qwen3VLConfig

    head_dim = size.hidden // size.heads
    half = head_dim // 2
    # Qwen3-VL interleaves the sections (T H W T H W ...): H takes dims 1, 4, 7, ... and W
    # 2, 5, 8, ... of head_dim/2, so 3 * section must fit; the real split is 24/20/20 of 64
    spatial = (half * 5) // 16
    text = _text_config(tokenizer, size)
    text.update(
        head_dim=head_dim,  # Qwen3VLTextConfig defaults to 128
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [half - 2 * spatial, spatial, spatial], "mrope_interleaved": True},
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
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_ids(tokenizer))


def qwen_config(kind: str, tokenizer, size: QwenSize):
    """The transformers config of a `kind` Qwen-VL of `size` whose vocabulary is `tokenizer`'s."""
    check_choice("kind", kind, QWEN_KINDS)
    return _qwen3_config(tokenizer, size) if kind == "qwen3_vl" else _qwen2_config(kind, tokenizer, size)


# ----------------------------------------------------------------------------- processor


def save_qwen_processor(kind: str, tokenizer, out: Path, max_pixels: Optional[int] = None) -> None:
    """`tokenizer` and the image processor, as a Hub Qwen-VL repo has them; images up to
    `max_pixels` (default: 112*112, 128*128 for qwen3_vl: 16 merged tokens)."""
    from transformers import Qwen2VLImageProcessorPil

    check_choice("kind", kind, QWEN_KINDS)
    if kind == "qwen3_vl":
        tokenizer.chat_template = QWEN3_CHAT_TEMPLATE  # saved as chat_template.jinja
        min_pixels, default_max, patch = QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS, QWEN3_PATCH
        extra = dict(image_mean=list(QWEN3_IMAGE_MEAN), image_std=list(QWEN3_IMAGE_STD))
    else:
        min_pixels, default_max, patch, extra = QWEN_MIN_PIXELS, QWEN_MAX_PIXELS, PATCH, {}
    max_pixels = default_max if max_pixels is None else max_pixels
    tokenizer.save_pretrained(str(out))
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch,
                                               merge_size=MERGE, temporal_patch_size=2, **extra)
    image_processor.save_pretrained(str(out))
    # as on the Hub: min/max_pixels spelled out (older transformers read only these), and
    # processor_class so the stock AutoProcessor finds the processor
    path = out / "preprocessor_config.json"
    config = json.loads(path.read_text())
    config.update(min_pixels=min_pixels, max_pixels=max_pixels, processor_class=_PROCESSOR_CLASSES[kind])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_qwen(kind: str, out, tokenizer, *, size: QwenSize = QwenSize(), seed: int = 0,
               max_pixels: Optional[int] = None) -> Path:
    """A `kind` Qwen-VL (one of `QWEN_KINDS`) of `size` with random weights drawn under `seed`,
    `tokenizer` (e.g. `qwen_tokenizer`'s) and its image processor, in `out`; returns `out`."""
    check_choice("kind", kind, QWEN_KINDS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_random(model_class(kind), qwen_config(kind, tokenizer, size), out, seed)
    save_qwen_processor(kind, tokenizer, out, max_pixels)
    return out
