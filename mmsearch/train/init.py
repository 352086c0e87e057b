"""Starting checkpoints with random weights: a model's own architecture re-initialised
(`init="config"`), or a Qwen2-VL of a given size built from scratch (`scratch`).

Both write an ordinary Hugging Face directory (`OUT/init`) that `load_encoder`
loads, so training always starts from a checkpoint on disk and a resumed run
starts from the same one. Weights are seeded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

from ..encoders.loading import write_model_card
from ..errors import InputError
from .settings import ScratchSettings

# Scratch models train (and then embed) with transformers' M-RoPE positions, as mmsearch-tiny did.
SCRATCH_FAMILY = "mmsearch"

PROCESSOR_FILE_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                           "chat_template*", "*preprocessor_config.json", "processor_config.json")
QWEN_MIN_SIDE = 56  # the smallest image Qwen's processor makes: 2x2 merged patches of 14 px


def copy_processor_files(src: Path, dst: Path) -> None:
    """Tokenizer and image-processor files of a checkpoint, so `dst` loads on its own."""
    dst.mkdir(parents=True, exist_ok=True)
    for pattern in PROCESSOR_FILE_PATTERNS:
        for f in Path(src).glob(pattern):
            if f.is_file() and f.resolve() != (dst / f.name).resolve():
                shutil.copy2(f, dst / f.name)


def _save_random(model_cls, config, out: Path, seed: int) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = model_cls(config)
    net.save_pretrained(str(out))


def init_from_config(encoder, out: Path, seed: int) -> Path:
    """`encoder`'s architecture, tokenizer and processor with fresh random weights, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    _save_random(type(encoder.model), encoder.model.config, out, seed)
    copy_processor_files(encoder.processor_dir, out)
    write_model_card(out, encoder.family)
    return out


def _set_image_size(out: Path, side: int) -> None:
    """Qwen's processor bounds: images up to side x side pixels (e.g. 112 -> 16 tokens)."""
    path = out / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    low, high = QWEN_MIN_SIDE * QWEN_MIN_SIDE, max(side, QWEN_MIN_SIDE) ** 2
    cfg.update(min_pixels=low, max_pixels=high, size={"shortest_edge": low, "longest_edge": high})
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_scratch(spec: ScratchSettings, texts: Iterable[str], out: Path, seed: int) -> Path:
    """A Qwen2-VL of `spec`'s size with a byte-level BPE of `spec.vocab_size` tokens
    (special tokens included) trained on `texts`, random weights, in `out`."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLForConditionalGeneration

    from ..testing import QwenSize, build_tiny_model

    size = QwenSize(hidden=spec.hidden, layers=spec.layers, heads=spec.heads, kv_heads=spec.kv_heads, ffn=spec.ffn,
                    vision_embed=spec.vision_embed, vision_depth=spec.vision_depth, vision_heads=spec.vision_heads)
    build_tiny_model("qwen2_vl", out, seed=seed, size=size)  # config, processor, special tokens
    base = AutoTokenizer.from_pretrained(str(out))
    tokenizer = base.train_new_from_iterator(texts, spec.vocab_size)
    specials = base.convert_tokens_to_ids(base.all_special_tokens + ["<|image_pad|>"])
    if tokenizer.convert_tokens_to_ids(base.all_special_tokens + ["<|image_pad|>"]) != specials:
        raise InputError("the retrained tokenizer moved the special tokens; cannot build the scratch model")
    tokenizer.save_pretrained(str(out))
    _set_image_size(out, spec.image_size)
    config = AutoConfig.from_pretrained(str(out))
    config.text_config.vocab_size = len(tokenizer)
    _save_random(Qwen2VLForConditionalGeneration, config, out, seed)
    write_model_card(out, SCRATCH_FAMILY)
    return out
