"""Settings of a training run, as frozen dataclasses built by the CLI (or by callers).

Defaults follow VLM2Vec (InfoNCE at temperature 0.02, LoRA rank 8 on the language
model's projections). Each dataclass checks its fields when built and names the
valid options in its errors.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from ..errors import InputError
from ..images import DEFAULT_MAX_PIXELS
from ..models.scratch import QwenSize

# LoRA on the language model's attention and MLP projections only. Qwen2.5-VL's
# vision MLP reuses gate/up/down_proj, hence the explicit exclusion of "visual".
DEFAULT_LORA_TARGETS = r"^(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
INITS = ("pretrained", "config")
OBJECTIVES = ("contrastive", "generate")


def _positive_int(name: str, value, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name}={value!r}: expected an int >= {low}")


def _positive_float(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{name}={value!r}: expected a {'non-negative' if allow_zero else 'positive'} number")


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise InputError(f"{name}={value!r}; valid: {', '.join(options)}")


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA (or DoRA) on `target_modules` (a regex over module names, or a list of names)."""

    rank: int = 8
    alpha: float = 16
    dropout: float = 0.05
    dora: bool = False
    target_modules: Union[str, Tuple[str, ...]] = DEFAULT_LORA_TARGETS

    def __post_init__(self) -> None:
        _positive_int("lora rank", self.rank)
        _positive_float("lora alpha", self.alpha)
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise InputError(f"lora dropout={self.dropout!r}: expected a number in [0, 1)")
        if not self.target_modules:
            raise InputError("lora target_modules is empty: give a regex or a list of module names")


@dataclass(frozen=True)
class MiningSettings:
    """Hard negatives mined from an index of the candidates.

    `source`: "auto" (the training file's candidates, indexed with the model being
    trained) or the path of an mmsearch index whose items are the candidate pool.
    Refreshed every `every` steps (0: once, at the start); each query keeps its
    `k` best hits that are not its positive and draws `per_query` of them per step.
    """

    source: str = "auto"
    every: int = 0
    k: int = 10
    per_query: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise InputError(f"mining source={self.source!r}: expected 'auto' or an index directory")
        _positive_int("mine_every", self.every, allow_zero=True)
        _positive_int("mine_k", self.k)
        _positive_int("mine_per_query", self.per_query)
        if self.per_query > self.k:
            raise InputError(f"mine_per_query={self.per_query} is larger than mine_k={self.k}")


@dataclass(frozen=True)
class ScratchSettings(QwenSize):
    """A Qwen2-VL built from scratch: its sizes (`QwenSize`'s fields and defaults, mmsearch-tiny's)
    and a byte-level BPE of `vocab_size` tokens trained on the training texts."""

    vocab_size: int = 900
    image_size: int = 112   # max side: Qwen's max_pixels = image_size ** 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int("vocab_size", self.vocab_size)
        _positive_int("image_size", self.image_size)
        if self.vocab_size < 257:
            raise InputError(f"vocab_size={self.vocab_size}: a byte-level BPE needs at least 257")


@dataclass(frozen=True)
class TrainSettings:
    data: Tuple[str, ...]                 # MMEB-train tables (JSONL or Parquet)
    out: str
    model: Optional[str] = None           # HF id or checkpoint dir; None with `scratch`
    family: Optional[str] = None          # the model's embedding recipe (default: its own, else its backbone's)
    image_root: Optional[str] = None      # image paths are relative to this (default: each table's folder)
    init: str = "pretrained"              # "config": the model's architecture, random weights
    scratch: Optional[ScratchSettings] = None
    vocab_data: Tuple[str, ...] = ()      # scratch: more tables whose texts train the BPE (e.g. later stages' data)
    lora: Optional[LoraSettings] = None   # None: full fine-tuning
    freeze: Optional[str] = None          # regex over parameter names kept fixed (e.g. the language model)
    objective: str = "contrastive"        # or "generate": predict the positive's text from the query
    save_adapter: bool = False            # output the LoRA adapter instead of merged weights
    batch_size: int = 64                  # queries per contrastive batch
    chunk_size: Optional[int] = None      # GradCache sub-batch; None: the whole batch at once
    grad_accum: int = 1
    max_steps: Optional[int] = None       # optimizer steps; None: `epochs` passes over the data
    epochs: float = 1.0
    lr: Optional[float] = None            # None: 2e-5 to fine-tune, 5e-4 for random weights (scratch/config)
    weight_decay: float = 0.0
    warmup: float = 0.04                  # a fraction of the steps (< 1) or a number of steps
    schedule: str = "cosine"
    max_grad_norm: Optional[float] = 1.0
    temperature: float = 0.02
    learn_temperature: bool = False
    matryoshka: Tuple[int, ...] = ()      # Matryoshka sizes: the loss summed over these prefixes (MRL); () plain
    data_negatives: bool = True           # use neg_text / neg_image_path when present
    per_dataset_batches: bool = False     # each batch from one dataset (the `dataset` column, else the table)
    mining: Optional[MiningSettings] = None
    distill_from: Optional[str] = None    # a teacher whose embeddings the distilled rows keep (see `distill`)
    distill_weight: float = 1.0
    distill_data: Tuple[str, ...] = ()    # tables of `data` to distil; empty: all of them
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None         # torch CPU threads while training; None: torch's default
    precision: str = "auto"               # auto: bf16 autocast on GPU, fp32 on CPU
    save_every: int = 0                   # resumable checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2
    resume: bool = False
    log_every: int = 10
    show_progress: bool = False
    max_image_pixels: Optional[int] = DEFAULT_MAX_PIXELS
    image_cache_mb: int = 512             # decoded training images kept in memory

    def __post_init__(self) -> None:
        if isinstance(self.data, str) or not self.data:
            raise InputError(f"data={self.data!r}: expected a non-empty list of MMEB-train tables")
        object.__setattr__(self, "data", tuple(str(d) for d in self.data))
        if (self.model is None) == (self.scratch is None):
            raise InputError("give exactly one of model (a checkpoint to start from) and scratch (a new model)")
        object.__setattr__(self, "vocab_data", tuple(str(d) for d in self.vocab_data))
        if self.vocab_data and self.scratch is None:
            raise InputError("vocab_data (--vocab-data) trains a scratch model's tokenizer; "
                             "it needs scratch (--scratch)")
        _choice("init", self.init, INITS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("objective", self.objective, OBJECTIVES)
        object.__setattr__(self, "matryoshka", tuple(self.matryoshka))
        for d in self.matryoshka:
            _positive_int("matryoshka size", d)
        if self.freeze is not None:
            try:
                re.compile(self.freeze)
            except re.error as e:
                raise InputError(f"freeze={self.freeze!r} is not a valid regular expression: {e}") from None
        if self.objective == "generate" and self.mining is not None:
            raise InputError("mined negatives (mining / --mine-negatives) need objective contrastive; "
                             "generation uses no negatives")
        self._check_distillation()
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            _positive_int(name, getattr(self, name))
        _positive_int("save_every", self.save_every, allow_zero=True)
        _positive_int("image_cache_mb", self.image_cache_mb, allow_zero=True)
        for name in ("chunk_size", "threads"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        for name in ("epochs", "temperature"):
            _positive_float(name, getattr(self, name))
        if self.lr is not None:
            _positive_float("lr", self.lr)
        _positive_float("weight_decay", self.weight_decay, allow_zero=True)
        _positive_float("warmup", self.warmup, allow_zero=True)
        if self.max_grad_norm is not None:
            _positive_float("max_grad_norm", self.max_grad_norm)
        if self.save_adapter and self.lora is None:
            raise InputError("save_adapter needs LoRA training (lora=LoraSettings(...) / --lora)")
        if self.save_adapter and (self.scratch is not None or self.init != "pretrained"):
            raise InputError("save_adapter needs a pretrained base to sit on; a randomly initialised base "
                             "is saved merged")

    def _check_distillation(self) -> None:
        object.__setattr__(self, "distill_data", tuple(str(d) for d in self.distill_data))
        _positive_float("distill_weight", self.distill_weight)
        if self.distill_from is None:
            if self.distill_data:
                raise InputError("distill_data (--distill-data) names the tables to distil; it needs a teacher "
                                 "(distill_from / --distill-from)")
            return
        if self.objective == "generate":
            raise InputError("distillation (distill_from / --distill-from) needs objective contrastive")
        tables = {str(Path(d)) for d in self.data}
        stray = [d for d in self.distill_data if str(Path(d)) not in tables]
        if stray:
            raise InputError(f"distill_data {stray} are not training tables; give tables that are also in data "
                             f"(--data): {', '.join(self.data)}")

    @property
    def learning_rate(self) -> float:
        """`lr`, or its default: VLM2Vec's 2e-5 to fine-tune; 5e-4 (with warmup) trains a small model
        from random weights without collapsing, where 1.5e-3 after 20 warmup steps collapsed."""
        if self.lr is not None:
            return self.lr
        return 2e-5 if self.scratch is None and self.init == "pretrained" else 5e-4
