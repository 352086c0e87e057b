"""Finding and loading checkpoints: local dirs or Hugging Face ids, adapters, devices.

Kept apart from the encoders so each error a user can hit (a missing path, a
hub id while offline, an unknown backbone) has one clear message.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional, Tuple

from ..errors import ModelLoadError

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "mmsearch.json"   # a checkpoint's family and task prompts, for mmsearch
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_path(model: str) -> bool:
    """Anything but a bare `owner/name` Hugging Face id is taken as a local path."""
    return not _HUB_ID.match(model)


# Models shipped inside the package, by name; `None` means the default one.
BUILTIN_MODELS = {"mmsearch-tiny": "tiny"}
DEFAULT_MODEL = "mmsearch-tiny"


def builtin_model_path(name: str) -> Path:
    from importlib import resources

    path = Path(str(resources.files("mmsearch").joinpath("models").joinpath(BUILTIN_MODELS[name])))
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the built-in model {name!r} is missing from this installation ({path}); "
                             f"reinstall mmsearch or pass --model")
    return path


def resolve_model_path(model, revision: Optional[str] = None) -> Path:
    """A local directory for `model`: a built-in model's, itself if it is one, else the HF
    cache / hub snapshot. None means the built-in default model."""
    model = DEFAULT_MODEL if model is None else model
    if str(model) in BUILTIN_MODELS:
        return builtin_model_path(str(model))
    path = Path(os.path.expanduser(str(model)))
    if path.is_dir():
        return path.resolve()
    name = str(model)
    if path.exists():
        raise ModelLoadError(f"model path {name!r} is a file; expected a checkpoint directory (config.json, weights)")
    if _looks_like_path(name):
        raise ModelLoadError(f"model path {name!r} does not exist")
    return _hub_snapshot(name, revision)


def _hub_snapshot(repo_id: str, revision: Optional[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:  # the cache first: no network needed for a model already downloaded
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    hint = (
        f"On a machine with access, run `huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here "
        f"and pass its path (load_encoder('DIR') / --model DIR), or copy the Hugging Face cache into HF_HOME."
    )
    if offline:
        raise ModelLoadError(f"model {repo_id!r} is not a local directory and not in the Hugging Face cache, "
                             f"and HF_HUB_OFFLINE is set. {hint}")
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as e:
        raise ModelLoadError(f"model {repo_id!r} is not a local directory and could not be fetched from the "
                             f"Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}). {hint}") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def adapter_base(path: Path) -> Optional[str]:
    """The base model an adapter-only checkpoint sits on, or None for a full checkpoint."""
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file() or (path / "config.json").is_file() and _has_full_weights(path):
        return None
    base = read_json(cfg_path).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{cfg_path} has no base_model_name_or_path; pass base_model=...")
    return base


def _has_full_weights(path: Path) -> bool:
    return any(p.name.startswith("model") and p.suffix in WEIGHT_SUFFIXES for p in path.iterdir())


def model_type(path: Path, trust_remote_code: bool = False) -> str:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    mt = read_json(cfg).get("model_type")
    if not mt:
        raise ModelLoadError(f"{cfg} has no model_type")
    return mt


def read_model_card(path: Path) -> dict:
    """A checkpoint's `mmsearch.json`: {"family": name, "tasks": {task: [query, candidate]}};
    {} when there is none. The tasks are the prompts the model was trained with."""
    card_path = path / MODEL_CARD
    if not card_path.is_file():
        return {}
    card = read_json(card_path)
    family = card.get("family")
    tasks = card.get("tasks", {})
    if not isinstance(card, dict) or (family is not None and not isinstance(family, str)) or not isinstance(tasks, dict):
        raise ModelLoadError(f"{card_path}: expected {{\"family\": str, \"tasks\": {{name: [query, candidate]}}}}")
    table = {}
    for name, pair in tasks.items():
        if isinstance(pair, dict):
            pair = [pair.get("query", ""), pair.get("candidate", "")]
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ModelLoadError(f"{card_path}: task {name!r} must be [query instruction, candidate instruction], "
                                 f"got {pair!r}")
        table[name] = tuple(pair)
    prefix = card.get("query_prefix")  # ColQwen2: the query prefix the checkpoint was trained with
    if prefix is not None and not isinstance(prefix, str):
        raise ModelLoadError(f"{card_path}: query_prefix must be a str, got {prefix!r}")
    return {"family": family, "tasks": table, "query_prefix": prefix}


def write_model_card(path: Path, family: str, tasks: Optional[dict] = None, query_prefix: Optional[str] = None) -> None:
    """Record in a checkpoint directory the family it embeds by (its task prompts, its query prefix)."""
    card = {"family": family, "tasks": {k: list(v) for k, v in (tasks or {}).items()}}
    if query_prefix is not None:
        card["query_prefix"] = query_prefix
    (Path(path) / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def resolve_device_dtype(device: str = "auto", dtype: str = "auto",
                         gpu_dtype: str = "bf16") -> Tuple["torch.device", "torch.dtype"]:
    """auto: CUDA with the family's GPU dtype (bf16 unless its reference runs fp16),
    else CPU fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but no CUDA GPU is available; use device='cpu'")
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype == "auto":
        return dev, (names[gpu_dtype] if dev.type == "cuda" else torch.float32)
    if isinstance(dtype, torch.dtype):
        return dev, dtype
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(names)}")
    return dev, names[dtype]


def gpu_present() -> bool:
    """An NVIDIA device node, without importing torch (which costs a second)."""
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def weights_fingerprint(path: Path) -> str:
    """A cheap, content-based id of a checkpoint's weights (name, size, head and tail bytes).

    Hashing multi-GB weights in full at every open would be slow; the head
    (safetensors header) and tail change whenever the weights do in practice.
    """
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]
