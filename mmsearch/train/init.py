"""Starting checkpoints with random weights: a model's own architecture re-initialised
(`init="config"`), or a Qwen2-VL of a given size built from scratch (`scratch`).

Both write an ordinary Hugging Face directory (`OUT/init`) that `load_encoder`
loads, so training always starts from a checkpoint on disk and a resumed run
starts from the same one. Weights are seeded.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from ..encoders.loading import write_model_card
from ..models.scratch import QWEN_MIN_SIDE, build_qwen, qwen_tokenizer, save_random
from .settings import ScratchSettings

# Scratch models train (and then embed) with transformers' M-RoPE positions, as mmsearch-tiny did.
SCRATCH_FAMILY = "mmsearch"

PROCESSOR_FILE_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                           "chat_template*", "*preprocessor_config.json", "processor_config.json")


def copy_processor_files(src: Path, dst: Path) -> None:
    """Tokenizer and image-processor files of a checkpoint, so `dst` loads on its own."""
    dst.mkdir(parents=True, exist_ok=True)
    for pattern in PROCESSOR_FILE_PATTERNS:
        for f in Path(src).glob(pattern):
            if f.is_file() and f.resolve() != (dst / f.name).resolve():
                shutil.copy2(f, dst / f.name)


def init_from_config(encoder, out: Path, seed: int) -> Path:
    """`encoder`'s architecture, tokenizer and processor with fresh random weights, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    save_random(type(encoder.model), encoder.model.config, out, seed)
    copy_processor_files(encoder.processor_dir, out)
    write_model_card(out, encoder.family)
    return out


def build_scratch(spec: ScratchSettings, texts: Iterable[str], out: Path, seed: int) -> Path:
    """A Qwen2-VL of `spec`'s sizes with a byte-level BPE of `spec.vocab_size` tokens (special
    tokens included) trained on `texts`, random weights and images up to `spec.image_size`
    pixels a side, in `out`."""
    pixels = max(spec.image_size, QWEN_MIN_SIDE) ** 2
    build_qwen("qwen2_vl", out, qwen_tokenizer(texts, spec.vocab_size), size=spec, seed=seed, max_pixels=pixels)
    write_model_card(out, SCRATCH_FAMILY)
    return out
