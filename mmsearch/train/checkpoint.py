"""Resumable checkpoints and the exported model.

A checkpoint (`OUT/checkpoints/step-NNNNNNNN/trainer_state.pt`) holds everything a
resumed run needs to continue exactly as an uninterrupted one: the trainable
weights (the LoRA weights, or all of them), the temperature, optimizer and
scheduler states, the torch RNG states, the step (which fixes the data order,
see `batches.DataOrder`) and the mined negatives. It holds only tensors and
plain values and loads with `torch.load(weights_only=True)`. Directories are
written under a temporary name and renamed, so a crash never leaves a torn one.

The export is an ordinary Hugging Face checkpoint in OUT that `load_encoder`
loads: merged weights, or the LoRA adapter with `base_model_name_or_path` set,
plus the tokenizer/processor files and `mmsearch_train.json` (the training card).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
CARD_FILE = "mmsearch_train.json"
PREFIX = "step-"
EXPORT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "adapter_model.*",
                   "adapter_config.json", "config.json", "generation_config.json")


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"{PREFIX}{step:08d}"


def list_checkpoints(out: Path):
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [d for d in root.iterdir() if d.name.startswith(PREFIX) and d.name[len(PREFIX):].isdigit()
            and (d / STATE_FILE).is_file()]
    return sorted(done, key=lambda d: int(d.name[len(PREFIX):]))


def latest_checkpoint(out: Path) -> Optional[Path]:
    found = list_checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(out: Path, step: int, state: dict, keep: int) -> Path:
    final = checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def export_model(model, out: Path, save_adapter: bool, base: Optional[str], card: dict,
                 matryoshka: Sequence[int] = ()) -> Path:
    """Write the trained model into `out` (see the module docstring). `matryoshka`: the sizes
    the MRL loss trained, recorded as the config's ``matryoshka_dims`` (as jina-v4's config
    names its own), so that `--dim` accepts them for this checkpoint."""
    from ..encoders.loading import write_model_card
    from .init import copy_processor_files

    out.mkdir(parents=True, exist_ok=True)
    _remove_export(out)
    if save_adapter:
        model.peft_model.peft_config["default"].base_model_name_or_path = base
        model.peft_model.save_pretrained(str(out))
    else:
        net = model.peft_model.merge_and_unload() if model.peft_model is not None else model.module
        model.encoder.model, model.peft_model = net, None
        if matryoshka:
            net.config.matryoshka_dims = sorted(set(matryoshka))
        net.save_pretrained(str(out))
    copy_processor_files(model.encoder.processor_dir, out)
    write_model_card(out, model.encoder.family, model.encoder.model_tasks)  # how the model embeds
    (out / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def _remove_export(out: Path) -> None:
    """Weights and configs of an earlier export, so a merged and an adapter export never mix."""
    for pattern in EXPORT_PATTERNS:
        for f in out.glob(pattern):
            if f.is_file():
                f.unlink()


def base_reference(model: str) -> str:
    """How an adapter names its base: an absolute path for a local directory, else the hub id."""
    path = Path(os.path.expanduser(model))
    return str(path.resolve()) if path.is_dir() else model
