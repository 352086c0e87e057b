"""The model being trained: an mmsearch `VLMEncoder` whose weights learn.

Training embeds through the encoder object itself (`model_inputs` + `embed`),
so formatting, processing, pooling and normalisation are the inference code.
LoRA/DoRA adapters are injected in place by peft; the encoder keeps calling the
same (now adapted) module. Master weights are fp32; on a GPU the forward runs
under bf16 autocast, as the reference trains.
"""
from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional

import torch

from ..errors import InputError
from .settings import LoraSettings, TrainSettings

INIT_DIR = "init"


@dataclass
class TrainableModel:
    encoder: Any                 # VLMEncoder; .model is the (adapted) HF model
    peft_model: Any = None       # the PeftModel wrapper when training LoRA
    base: Optional[str] = None   # the checkpoint training started from

    @property
    def module(self) -> torch.nn.Module:
        return self.encoder.model

    def trainable(self) -> Dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()


def starting_checkpoint(settings: TrainSettings, out: Path, texts: Callable, resuming: bool) -> str:
    """The checkpoint to load: the given model, or a random one written to OUT/init
    (reused when resuming, rebuilt otherwise; `texts()` feeds the scratch tokenizer)."""
    from .init import build_scratch, init_from_config

    init = out / INIT_DIR
    if settings.scratch is None and settings.init == "pretrained":
        return settings.model
    if not resuming:
        shutil.rmtree(init, ignore_errors=True)
    if not (init / "config.json").is_file():
        if settings.scratch is not None:
            build_scratch(settings.scratch, texts(), init, settings.seed)
        else:
            init_from_config(_load(settings.model, "cpu", settings.family), init, settings.seed)
    return str(init)


def _load(model: str, device: str, family: Optional[str] = None):
    from ..encoders import load_encoder
    from ..encoders.vlm import VLMEncoder

    enc = load_encoder(model, device=device, dtype="fp32", family=family)
    if not isinstance(enc, VLMEncoder):
        raise InputError(f"model {model!r} is a {enc.backbone} dual encoder; the trainer trains VLM2Vec backbones "
                         f"(qwen2_vl, qwen2_5_vl, llava_next, phi3_v)")
    return enc


def _lora_config(lora: LoraSettings):
    from peft import LoraConfig

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_dora=lora.dora,
                      target_modules=targets)


def build_model(settings: TrainSettings, checkpoint: str) -> TrainableModel:
    """Load `checkpoint` as an encoder and make its weights trainable (LoRA or all)."""
    # a started run's checkpoints carry their family (mmsearch.json); the first load takes the setting's
    enc = _load(checkpoint, settings.device, settings.family if checkpoint == settings.model else None)
    peft_model = None
    if settings.lora is not None:
        from peft import get_peft_model

        try:
            peft_model = get_peft_model(enc.model, _lora_config(settings.lora))
        except ValueError as e:
            raise InputError(f"cannot apply LoRA to {checkpoint}: {e}") from None
        enc.model = peft_model.get_base_model()  # the same module, adapters injected
    else:
        for p in enc.model.parameters():
            p.requires_grad_(True)
    if settings.freeze is not None:
        _freeze(enc.model, settings.freeze)
    model = TrainableModel(encoder=enc, peft_model=peft_model, base=checkpoint)
    model.train()
    return model


def _freeze(module: torch.nn.Module, pattern: str) -> None:
    """Fix the parameters whose names match `pattern`; it must leave some to train, and fix some."""
    rx = re.compile(pattern)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    hit = [p for n, p in named if rx.search(n)]
    if not hit or len(hit) == len(named):
        example = ", ".join(n for n, _ in named[:3])
        raise InputError(f"freeze={pattern!r} matches {len(hit)} of the {len(named)} trainable parameters; it must "
                         f"match some and leave some (names look like: {example})")
    for p in hit:
        p.requires_grad_(False)


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """bf16 autocast on a GPU (precision auto/bf16), else no autocast (fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def parameter_groups(model: TrainableModel, temperature: torch.nn.Module, weight_decay: float) -> List[dict]:
    """AdamW groups: matrices decay, biases/norms/temperature do not."""
    decay, no_decay = [], []
    for p in model.trainable().values():
        (decay if p.ndim >= 2 else no_decay).append(p)
    no_decay += [p for p in temperature.parameters() if p.requires_grad]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
