"""jina-embeddings-v4 as published: custom code, a multi-task LoRA folder, loaded without it.

The repository ``jinaai/jina-embeddings-v4`` is a Qwen2.5-VL checkpoint plus the authors'
code (``modeling_jina_embeddings_v4.py``, ``configuration_jina_embeddings_v4.py``,
``custom_lora_module.py``, a vendored ``qwen2_5_vl.py``) and an ``adapters/`` folder with one
LoRA that holds a separate A/B pair per task. mmsearch never runs that code
(no ``trust_remote_code``): it loads the backbone into transformers'
``Qwen2_5_VLForConditionalGeneration`` and adds the chosen task's LoRA delta to each adapted
linear layer, which is what the authors' layer computes at run time. Where each fact comes
from ("ref:"; read from stored copies of the repository's files found with the code search,
which do not name the repository they were taken from):

- ref: modeling_jina_embeddings_v4.py ``JinaEmbeddingsV4Model.from_pretrained``: loads the
  backbone with ``key_mapping=super()._checkpoint_conversion_mapping`` (the vendored
  Qwen2.5-VL's legacy-name mapping), then ``LoraConfig.from_pretrained(<repo>/adapters)`` and
  ``PeftModel.from_pretrained(base, <repo>/adapters, config=...)`` with every ``nn.Linear``
  replaced by ``MultiAdapterLinear(task_names=config.task_names)``. Its docstring: "configures
  it with the appropriate task adapter (`retrieval` by default)".
- ref: custom_lora_module.py ``MultiAdapterLinear``: ``update_layer`` builds, per task name,
  ``lora_A[adapter][task] = Linear(in, r, bias=False)`` and
  ``lora_B[adapter][task] = Linear(r, out, bias=lora_bias)``; scaling is ``lora_alpha / r``
  (``lora_alpha / sqrt(r)`` with ``use_rslora``); ``forward(x, task_label)`` with one task name
  adds ``lora_B[task](lora_A[task](dropout(x))) * scaling`` to the base output; dropout is the
  identity at inference; ``merge``/``unmerge`` raise NotImplementedError (so merging here is
  ours, with the same arithmetic: ``W + scaling * B @ A``, and ``b + scaling * b_B``).
- The per-task tensors are therefore ``<module>.lora_A.default.<task>.weight`` in memory
  (``default``: peft's adapter name), under peft's ``base_model.model.`` prefix. On disk, peft
  of the model's time (``utils/save_and_load.py`` ``get_peft_model_state_dict``, which replaced
  every ``.default``) wrote ``<module>.lora_A.<task>.weight`` and puts the name back after the
  ``lora_A`` segment on load (``_insert_adapter_name_into_state_dict``); peft 0.21
  (``tuners_utils._remove_adapter_name_from_state_dict_key``) strips the name only right before
  ``.weight``, so it keeps ``.default.<task>``. Both forms are read.
- ref: configuration_jina_embeddings_v4.py ``JinaEmbeddingsV4Config(Qwen2_5_VLConfig)``: no
  ``model_type`` of its own, so config.json says ``qwen2_5_vl``; the model reads
  ``config.task_names``, ``config.matryoshka_dims`` and ``config.truncate_dim``
  (``_validate_encoding_params``), stored in config.json as extra fields.
- ref: ``JinaEmbeddingsV4Model._init_projection_layer``: ``multi_vector_projector`` is an
  ``nn.Linear(hidden, multi_vector_projector_dim)`` at the top level (keys
  ``multi_vector_projector.weight``/``.bias``); the single vector never uses it, so the backbone
  load skips it (the backbone class reports it as an unexpected key). The multi-vector family
  (``jina_v4_multivector``) loads it with `load_projector`, its task LoRA pair merged: the
  adapter's ``target_modules`` name the projectors and, in the authors' model, every
  ``nn.Linear`` is a ``MultiAdapterLinear``, so ``get_multi_vector_embeddings`` calls
  ``multi_vector_projector(hidden_states, task_label=task_label)`` (read from a stored copy).

Not found in any stored source, hence accepted in both forms rather than guessed: whether
the backbone weights and adapter keys use the transformers-4 names (``model.layers.*``,
``visual.*``) or the transformers-5 ones (``model.language_model.*``, ``model.visual.*``);
the exact ``adapter_config.json`` (its ``r``, ``lora_alpha`` and targets are read from the
file, never assumed); the vendored ``qwen2_5_vl.py`` (that it passes ``task_label`` to every
adapted linear layer is inferred from ``MultiAdapterLinear.forward`` requiring it).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import ModelLoadError

ADAPTERS_DIR = "adapters"
DEFAULT_TASK = "retrieval"   # ref: JinaEmbeddingsV4Model.from_pretrained docstring
JINA_CLASSES = "JinaEmbeddingsV4"   # prefix of the custom classes config.json's auto_map/architectures name
PROJECTORS = ("multi_vector_projector", "single_vector_projector")   # heads outside the backbone

# "<module>.lora_A.<task>.weight", optionally under peft's "base_model.model." and with the
# in-memory adapter name "default" still in it.
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.lora_(?P<side>[AB])\."
                       r"(?:default\.)?(?P<task>[^.]+)\.(?P<param>weight|bias)$")
# transformers-4 module paths -> transformers 5's (the vendored model's
# `_checkpoint_conversion_mapping`, as transformers 4.52 defines it for Qwen2.5-VL); no-ops on new names
_MODULE_RENAMES = ((re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
                   (re.compile(r"^visual\."), "model.visual."))


@dataclass(frozen=True)
class Layout:
    """A checkpoint folder laid out as jinaai/jina-embeddings-v4 is."""

    path: Path
    adapters: Path                 # the LoRA folder (adapter_config.json + weights)
    task_names: Tuple[str, ...]    # config.task_names
    truncate_dim: Optional[int]    # config.truncate_dim: the authors' default Matryoshka size


def read_layout(path: Path) -> Optional[Layout]:
    """The jina-v4 layout of `path`, or None for any other checkpoint.

    Recognised by its files, not its name: config.json naming the authors' classes
    (``auto_map``/``architectures``: JinaEmbeddingsV4*) or listing ``task_names``, together
    with ``adapters/adapter_config.json``. A config whose ``architectures`` is the authors'
    model but without the adapters folder is an error: the task LoRA is part of the model (a
    folder with one task merged names a stock class there and loads as a plain Qwen2.5-VL)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # reported by whoever reads config.json next
    if not isinstance(cfg, dict):
        return None
    architectures = json.dumps(cfg.get("architectures") or [])
    custom = JINA_CLASSES in architectures or JINA_CLASSES in json.dumps(cfg.get("auto_map") or {})
    adapters = Path(path) / ADAPTERS_DIR
    has_adapters = (adapters / "adapter_config.json").is_file()
    if not has_adapters:
        if JINA_CLASSES in architectures:
            raise ModelLoadError(
                f"{path} is a jina-embeddings-v4 checkpoint (config.json names {JINA_CLASSES}* classes) but has "
                f"no {ADAPTERS_DIR}/adapter_config.json: its task adapters are part of the model; download the "
                f"whole repository, {ADAPTERS_DIR}/ included")
        return None
    if not custom and not cfg.get("task_names"):
        return None
    tasks = cfg.get("task_names") or ()
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        raise ModelLoadError(f"{cfg_path}: task_names must be a list of names, got {tasks!r}")
    truncate = cfg.get("truncate_dim")
    return Layout(Path(path), adapters, tuple(tasks), truncate if isinstance(truncate, int) else None)


# ----------------------------------------------------------------------------- the adapter


@dataclass(frozen=True)
class TaskLora:
    """One task's LoRA: per module (transformers-5 path), A [r, in], B [out, r], B's bias or None."""

    task: str
    scaling: float
    pairs: Dict[str, tuple]
    skipped: Tuple[str, ...]       # modules outside the backbone (the projectors)
    heads: Dict[str, tuple] = field(default_factory=dict)  # projector name -> (A, B, B's bias or None)


def adapter_settings(adapters: Path) -> Tuple[int, float, bool]:
    """(r, lora_alpha, use_rslora) of adapters/adapter_config.json (what MultiAdapterLinear is built with)."""
    cfg_path = adapters / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {cfg_path}: {e}") from None
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ModelLoadError(f"{cfg_path}: peft_type {peft_type!r}; jina-v4's task adapters are LoRA")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        # peft would give those modules another r / alpha; not seen in jina's adapters, so not guessed
        raise ModelLoadError(f"{cfg_path}: per-module rank_pattern/alpha_pattern are not supported")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1 or not isinstance(alpha, (int, float)):
        raise ModelLoadError(f"{cfg_path}: expected a positive int r and a number lora_alpha, got r={r!r}, "
                             f"lora_alpha={alpha!r}")
    return r, float(alpha), bool(cfg.get("use_rslora", False))


def _adapter_file(adapters: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapters / name).is_file():
            return adapters / name
    raise ModelLoadError(f"{adapters} has adapter_config.json but no adapter_model.safetensors / .bin")


def _read_adapter(adapters: Path, wanted=None) -> dict:
    """Tensors of the adapter file (`wanted`: those names only; None: all). Names only, without
    tensors, with `wanted=()` on safetensors."""
    import torch

    path = _adapter_file(adapters)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys()) if wanted is None else [k for k in f.keys() if k in set(wanted)]
                return {k: f.get_tensor(k) for k in names} if wanted != () else dict.fromkeys(f.keys())
        weights = torch.load(str(path), map_location="cpu", weights_only=True)
        return weights if wanted is None else (
            dict.fromkeys(weights) if wanted == () else {k: v for k, v in weights.items() if k in set(wanted)})
    except Exception as e:  # a truncated download, a wrong format
        raise ModelLoadError(f"cannot read the task adapters in {path}: {type(e).__name__}: {e}") from None


def _task_keys(layout: Layout) -> Dict[str, list]:
    """task -> its tensor names. Every tensor must be a LoRA A/B of some task: anything else
    (full weights saved beside the adapter, say) is an error rather than silently dropped."""
    by_task, unknown = {}, []
    for key in _read_adapter(layout.adapters, ()):
        m = _LORA_KEY.match(key)
        if m is None:
            unknown.append(key)
        else:
            by_task.setdefault(m["task"], []).append(key)
    if unknown:
        raise ModelLoadError(f"{layout.adapters}: tensors that are not per-task LoRA weights "
                             f"(<module>.lora_A|B.<task>.weight): {sorted(unknown)[:5]}")
    return by_task


def valid_tasks(layout: Layout, by_task: Optional[dict] = None) -> Tuple[str, ...]:
    """The tasks one can choose: config.task_names (else every task the weights hold) that have weights."""
    by_task = _task_keys(layout) if by_task is None else by_task
    return tuple(t for t in (layout.task_names or sorted(by_task)) if t in by_task)


def check_task(layout: Layout, task: Optional[str], valid: Optional[Tuple[str, ...]] = None) -> str:
    """`task` (None: retrieval) if the checkpoint has it, else a ModelLoadError naming the valid
    ones (`valid`: `valid_tasks(layout)`, if already known)."""
    task = DEFAULT_TASK if task is None else task
    valid = valid_tasks(layout) if valid is None else valid
    if task not in valid:
        raise ModelLoadError(f"unknown adapter {task!r} for {layout.path}; valid: {', '.join(valid) or 'none'}")
    return task


def module_path(name: str) -> str:
    """The transformers-5 module path of a module named in a checkpoint or an adapter."""
    for pattern, new in _MODULE_RENAMES:
        name = pattern.sub(new, name, count=1)
    return name


def read_task_lora(layout: Layout, task: Optional[str]) -> TaskLora:
    """The LoRA of `task` (default: retrieval) from the adapters folder, checked; only that
    task's tensors are read."""
    r, alpha, rslora = adapter_settings(layout.adapters)
    by_task = _task_keys(layout)
    task = check_task(layout, task, valid_tasks(layout, by_task))
    modules = {}
    for key, tensor in _read_adapter(layout.adapters, by_task[task]).items():
        m = _LORA_KEY.match(key)
        modules.setdefault(m["module"], {})[(m["side"], m["param"])] = tensor
    # ref: MultiAdapterLinear.update_layer: scaling = lora_alpha / r, or / sqrt(r) with use_rslora
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    pairs, skipped, heads = {}, [], {}
    for module, parts in sorted(modules.items()):
        a, b = parts.get(("A", "weight")), parts.get(("B", "weight"))
        if a is None or b is None or ("A", "bias") in parts:
            raise ModelLoadError(f"{layout.adapters}: {module} has an incomplete LoRA for {task!r} "
                                 f"(needs lora_A.{task}.weight and lora_B.{task}.weight)")
        if a.shape[0] != r or b.shape[1] != r:
            raise ModelLoadError(f"{layout.adapters}: {module} LoRA for {task!r} has rank {a.shape[0]}/{b.shape[1]}, "
                                 f"adapter_config.json says r={r}")
        if module.split(".")[-1] in PROJECTORS:
            skipped.append(module)
            heads[module.split(".")[-1]] = (a, b, parts.get(("B", "bias")))
            continue
        pairs[module_path(module)] = (a, b, parts.get(("B", "bias")))
    return TaskLora(task, scaling, pairs, tuple(skipped), heads)


def merge_task_lora(net, lora: TaskLora) -> int:
    """Add the task's delta to each adapted nn.Linear of `net` in place; return how many."""
    import torch

    for path, pair in lora.pairs.items():
        try:
            layer = net.get_submodule(path)
        except AttributeError:
            layer = None
        if not isinstance(layer, torch.nn.Linear):
            raise ModelLoadError(f"the {lora.task!r} adapter adapts {path}, which is not a linear layer of "
                                 f"this Qwen2.5-VL backbone")
        merge_pair(layer, pair, lora, path)
    return len(lora.pairs)


def merge_pair(layer, pair: tuple, lora: TaskLora, path: str) -> None:
    """One LoRA pair (A, B, B's bias) into `layer`, in place.

    ref: MultiAdapterLinear.forward with one task name: base(x) + B(A(x)) * scaling, i.e.
    W' = W + scaling * B @ A (and bias' = bias + scaling * B.bias when the LoRA B has one)."""
    import torch

    a, b, b_bias = pair
    w = layer.weight
    if tuple(w.shape) != (b.shape[0], a.shape[1]):
        raise ModelLoadError(f"the {lora.task!r} adapter for {path} is {b.shape[0]}x{a.shape[1]}, "
                             f"the layer is {w.shape[0]}x{w.shape[1]}")
    with torch.no_grad():
        delta = (b.to(torch.float64) @ a.to(torch.float64)) * lora.scaling
        w.copy_((w.to(torch.float64) + delta.to(w.device)).to(w.dtype))
        if b_bias is not None:
            if layer.bias is None:
                raise ModelLoadError(f"the {lora.task!r} adapter adds a bias to {path}, which has none")
            bias = layer.bias
            bias.copy_((bias.to(torch.float64) + lora.scaling * b_bias.to(torch.float64).to(bias.device))
                       .to(bias.dtype))


def load_projector(layout: Layout, task: Optional[str], dtype, name: str = "multi_vector_projector"):
    """The checkpoint's top-level projector head `name` as an nn.Linear (with its bias), the
    task's LoRA pair for it merged. ref: JinaEmbeddingsV4Model._init_projection_layer builds it
    as ``nn.Linear(hidden, dim)`` (bias on); get_multi_vector_embeddings runs it with the task label."""
    import torch
    from safetensors import safe_open

    tensors = {}
    for path in sorted(layout.path.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.split(".")[-2:-1] == [name]:  # "<name>.weight", with or without a prefix
                    tensors[key.rsplit(".", 1)[-1]] = f.get_tensor(key)
    if "weight" not in tensors:
        raise ModelLoadError(f"{layout.path}: no {name}.weight in the checkpoint's *.safetensors: the multi-vector "
                             f"head is missing (single-vector use needs no head: family jina_v4)")
    weight = tensors["weight"]
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors)
    with torch.no_grad():
        head.weight.copy_(weight)
        if "bias" in tensors:
            head.bias.copy_(tensors["bias"])
    lora = read_task_lora(layout, task)
    if name in lora.heads:
        merge_pair(head, lora.heads[name], lora, name)
    return head.to(dtype).eval()


# ----------------------------------------------------------------------------- loading


def load_model(layout: Layout, task: Optional[str], dtype):
    """The backbone with `task`'s LoRA merged: transformers' Qwen2_5_VLForConditionalGeneration,
    no remote code. Every backbone weight must come from the checkpoint (both naming
    generations load: transformers 5 maps the legacy names); the projector head is skipped."""
    import transformers

    from .qwen_vision import speed_up_vision

    lora = read_task_lora(layout, task)  # check the adapter before loading gigabytes
    try:
        net, info = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(layout.path), dtype=dtype, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the jina-embeddings-v4 backbone from {layout.path}: {e}") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not _tied(net, k))
    if missing:
        raise ModelLoadError(f"{layout.path}: backbone weights missing from the checkpoint (its key names do "
                             f"not map to Qwen2.5-VL's): {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    merge_task_lora(net, lora)
    speed_up_vision(net)
    return net


def _tied(net, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(net.config, "tie_word_embeddings", False))


def load_processor(path: Path, preset):
    """Qwen2.5-VL's processor from the checkpoint's files. The published files may name the
    authors' processor class (JinaEmbeddingsV4Processor, a Qwen2_5_VLProcessor subclass whose
    process_texts/process_images only build the prompts mmsearch's recipe builds), so the
    stock class is named explicitly instead of going through AutoProcessor."""
    from .processors import image_kwargs, load_vlm_processor, torchvision_available

    if not torchvision_available():  # mmsearch's own image-only Qwen processor: no Auto lookup of the class
        return load_vlm_processor(path, "qwen2_5_vl", preset)
    import transformers

    try:
        return transformers.Qwen2_5_VLProcessor.from_pretrained(str(path), **image_kwargs("qwen2_5_vl", preset))
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot load the qwen2_5_vl processor from {path}: {e}") from None


def fingerprint(base: str, layout: Optional[Layout], task: Optional[str]) -> str:
    """The weights fingerprint of a jina checkpoint under one task: the backbone files', the
    adapter files' and the task name, so an index built under one task is not searched with
    another's vectors."""
    h = hashlib.sha256(base.encode())
    if layout is not None:
        for p in sorted(layout.adapters.iterdir()):
            if p.is_file():
                h.update(f"{p.name}:{p.stat().st_size}".encode())
                with open(p, "rb") as f:
                    h.update(f.read(1 << 20))
                    if p.stat().st_size > 2 << 20:
                        f.seek(-(1 << 20), os.SEEK_END)
                        h.update(f.read())
    h.update(f"adapter={task}".encode())
    return h.hexdigest()[:16]
