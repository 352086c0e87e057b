"""`load_encoder`: from a model id or directory to a ready Encoder.

The backbone is chosen by `config.model_type`, the family (`recipes`) by, first
that applies: the call's `family`, a known checkpoint's preset, the directory's
`mmsearch.json`, the default for the backbone. Adapter-only checkpoints
(`adapter_config.json`, as VLM2Vec's Qwen2-VL and LoRA repos are) load onto
their base through peft and are merged, so inference costs what a plain model
costs. jina-embeddings-v4's own layout (custom code, a multi-task `adapters/`
folder) loads without its code, the chosen task's LoRA merged (`jina`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..errors import ModelLoadError
from ..images import DEFAULT_MAX_PIXELS
from . import jina, text_runtime
from .base import Encoder
from .colpali import ColPaliEncoder
from .colpali import load_processor as load_colpali_processor
from .dual import DUAL_BACKBONES, DualEncoder
from .formatting import BACKBONES
from .loading import (BUILTIN_MODELS, DEFAULT_MODEL, adapter_base, gpu_present, model_type, read_model_card,
                      resolve_device_dtype, resolve_model_path, weights_fingerprint)
from .jina_multivector import JinaMultiVectorEncoder
from .multivector import MultiVectorEncoder, vlm_backbone
from .presets import Preset, preset_for
from .processors import load_dual_processors, load_vlm_processor
from .recipes import Recipe, recipe_for
from .vlm import VLMEncoder

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
    "colqwen2": "ColQwen2ForRetrieval",   # ColQwen2 and ColQwen2.5 (vlm_config qwen2_vl / qwen2_5_vl)
    "colpali": "ColPaliForRetrieval",     # a PaliGemma inside
}
SUPPORTED = BACKBONES + DUAL_BACKBONES

# Adapters saved under transformers 4 name Qwen's language-model weights
# `model.layers.*`; transformers 5 nests them as `model.language_model.layers.*`.
# peft does not rename them for Qwen2-VL and only warns about missing keys, which
# would leave the LoRA weights random. This mapping is a no-op for new-style keys.
ADAPTER_KEY_MAPPING = {
    "qwen2_vl": {r"^model\.(?!language_model\.|visual\.)": "model.language_model."},
    "qwen2_5_vl": {r"^model\.(?!language_model\.|visual\.)": "model.language_model."},
}


def load_encoder(
    model=None,
    device: str = "auto",
    dtype: str = "auto",
    *,
    family: Optional[str] = None,
    dim: Optional[int] = None,
    revision: Optional[str] = None,
    max_image_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    **overrides,
) -> Encoder:
    """Load an encoder from a Hugging Face id or a local checkpoint directory
    (None: the small model shipped with mmsearch, "mmsearch-tiny").

    `family` names the embedding recipe (`mmsearch.encoders.recipes.FAMILIES`); `dim`
    truncates to a Matryoshka size the family lists. `overrides` replace fields of the
    checkpoint's preset (see `mmsearch.encoders.presets.Preset`): e.g.
    `image_size=(448, 448)`, `max_pixels=...`, `processor="path/to/processor"`, `base_model=...`,
    `adapter="text-matching"` (jina-embeddings-v4's task: retrieval, the default, text-matching or code).
    """
    model = DEFAULT_MODEL if model is None else model
    ck = describe_checkpoint(model, family, revision, **overrides)
    dev, dt = resolve_device_dtype(device, dtype, gpu_dtype=ck.recipe.gpu_dtype)
    tokens = ck.recipe.pooling == "tokens"  # a token-matrix (multi-vector) model
    if ck.jina_layout is not None:  # jina-v4's published layout: backbone + the chosen task's LoRA, merged
        net = jina.load_model(ck.jina_layout, ck.adapter, dt)
        if tokens:  # its multi-vector head, beside the backbone, moving with it
            net.multi_vector_projector = jina.load_projector(ck.jina_layout, ck.adapter, dt)
        elif dim is None:
            dim = ck.jina_layout.truncate_dim  # the config's default truncation (single vectors), if any
    elif tokens and ck.backbone not in TOKEN_BACKBONES:
        raise ModelLoadError(f"the {ck.recipe.name} family needs jina-embeddings-v4's published layout (its "
                             f"multi_vector_projector and adapters/); {ck.path} is a plain {ck.backbone} folder")
    else:
        net = _load_model(ck.weights_dir, ck.backbone, ck.preset, dt)
    if ck.base is not None:
        net = _merge_adapter(net, ck.path, ADAPTER_KEY_MAPPING.get(ck.backbone))
    net = net.to(dev)
    common = dict(backbone=ck.backbone, recipe=ck.recipe, name=_record_name(model), device=dev, dtype=dt,
                  fingerprint=_fingerprint(ck), max_pixels=max_image_pixels)
    if ck.backbone in DUAL_BACKBONES:
        tok, improc = load_dual_processors(ck.path)
        enc = DualEncoder(net, tok, improc, batch_size=ck.preset.batch_size, **common)
        ck.recipe.check_dim(dim, enc.dim)
        return enc
    proc_dir = _processor_dir(ck.path, ck.weights_dir, ck.preset)
    if tokens:
        enc = _token_encoder(ck, net, proc_dir, common)
        ck.recipe.check_dim(dim, enc.token_dim)
        return enc
    if ck.jina_layout is not None and proc_dir == ck.path:
        processor = jina.load_processor(proc_dir, ck.preset)
    else:
        processor = load_vlm_processor(proc_dir, ck.backbone, ck.preset)
    enc = VLMEncoder(net, processor, preset=ck.preset, processor_dir=proc_dir, tasks=ck.tasks, **common)
    listed = getattr(net.config, "matryoshka_dims", None)  # a checkpoint may name its own sizes
    enc.dim = ck.recipe.check_dim(dim, enc.full_dim, listed) or enc.full_dim
    enc.matryoshka_dims = tuple(listed) if listed else None
    return enc


TOKEN_BACKBONES = ("colqwen2", "colpali")  # checkpoints that are multi-vector models as a whole


def _token_encoder(ck: "Checkpoint", net, proc_dir: Path, common: dict) -> MultiVectorEncoder:
    """The multi-vector encoder of a checkpoint: ColQwen2, ColPali or jina-v4's multi-vector head."""
    kwargs = dict(preset=ck.preset, processor_dir=proc_dir, tasks=ck.tasks, **common)
    if ck.backbone == "colpali":
        return ColPaliEncoder(net, load_colpali_processor(proc_dir), **kwargs)
    if ck.jina_layout is not None:
        processor = (jina.load_processor(proc_dir, ck.preset) if proc_dir == ck.path
                     else load_vlm_processor(proc_dir, ck.backbone, ck.preset))
        return JinaMultiVectorEncoder(net, processor, **kwargs)
    processor = load_vlm_processor(proc_dir, vlm_backbone(net.config), ck.preset, stock=False)
    return MultiVectorEncoder(net, processor, **kwargs)


def load_text_encoder(model=None, device: str = "auto", *, family: Optional[str] = None, dim: Optional[int] = None,
                      revision: Optional[str] = None, max_image_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                      **overrides) -> Tuple[Optional[Encoder], str]:
    """The torch-free text query encoder (`text_runtime`) for `model`, and why not (None, reason)
    when the checkpoint needs torch even for text. Image inputs load the torch encoder
    (same arguments) when the first one comes. Only on the CPU: a GPU is torch's."""
    if device not in ("auto", "cpu") or (device == "auto" and gpu_present()):
        return None, f"device {device!r}" if device != "auto" else "a GPU is present"
    ck = describe_checkpoint(model, family, revision, **overrides)
    config = json.loads((ck.weights_dir / "config.json").read_text())
    why = text_runtime.unsupported_reason(ck.backbone, config, ck.recipe, ck.base is not None or
                                          ck.jina_layout is not None)
    proc_dir = _processor_dir(ck.path, ck.weights_dir, ck.preset)
    if why is None and not (proc_dir / "tokenizer.json").is_file():
        why = f"no tokenizer.json in {proc_dir}"
    if why is None and not text_runtime.weight_files(ck.weights_dir):
        why = "no .safetensors weights"
    if why is not None:
        return None, why
    from tokenizers import Tokenizer

    decoder = text_runtime.TextDecoder.load(ck.weights_dir, config)
    full_dim = decoder.config.hidden
    listed = config.get("matryoshka_dims")
    enc = text_runtime.TextQueryEncoder(
        decoder, Tokenizer.from_file(str(proc_dir / "tokenizer.json")), full_dim=full_dim,
        dim=ck.recipe.check_dim(dim, full_dim, listed) or full_dim, tasks=ck.tasks,
        load_full=lambda: load_encoder(model, "cpu", family=family, dim=dim, revision=revision,
                                       max_image_pixels=max_image_pixels, **overrides),
        backbone=ck.backbone, recipe=ck.recipe, name=_record_name(DEFAULT_MODEL if model is None else model),
        device="cpu", dtype="float32", fingerprint=_fingerprint(ck), max_pixels=max_image_pixels)
    enc.matryoshka_dims = tuple(listed) if listed else None
    return enc, ""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint is, read from its files without loading weights."""

    path: Path                  # the checkpoint (or adapter) directory
    base: Optional[str]         # an adapter's base model, else None
    weights_dir: Path           # where the full weights are
    backbone: str
    recipe: Recipe
    preset: Preset
    card: dict                  # its mmsearch.json: family and task prompts
    jina_layout: Optional["jina.Layout"] = None  # jina-embeddings-v4's published layout, if it is one
    adapter: Optional[str] = None     # the task adapter: merged from `jina_layout`, else a prompt rule only

    @property
    def tasks(self) -> dict:
        return self.card.get("tasks") or {}


def describe_checkpoint(model=None, family: Optional[str] = None, revision: Optional[str] = None,
                        **overrides) -> Checkpoint:
    """The checkpoint's backbone and family (call, preset, mmsearch.json, backbone default)."""
    model = DEFAULT_MODEL if model is None else model
    preset = preset_for(model).override(**overrides)
    path = resolve_model_path(model, revision)
    card = read_model_card(path)
    base = adapter_base(path)  # None for a full (or already merged) checkpoint
    if base is not None and preset.base_model:
        base = preset.base_model  # lets a user point at a local copy of the base
    weights_dir = resolve_model_path(base) if base else path
    layout = jina.read_layout(path) if base is None else None  # recognised by its files, not its name
    backbone = preset.backbone or model_type(weights_dir)
    recipe = recipe_for(backbone, family or preset.family or card.get("family") or (layout and "jina_v4"))
    adapter = preset.adapter
    if layout is not None:
        valid = jina.valid_tasks(layout)
        adapter = jina.check_task(layout, adapter, valid)  # default retrieval; an unknown one names the valid
        if recipe.adapters:
            recipe = recipe.with_adapter(adapter, valid=valid)
    else:
        recipe = recipe.with_adapter(adapter)  # a folder with one task merged: its prompt rule
    prefix = preset.query_prefix if preset.query_prefix is not None else card.get("query_prefix")
    recipe = recipe.with_query_prefix(prefix)  # ColQwen2: the prefix its checkpoint was trained with
    if recipe.processor_pixels:  # the family's code sets them, whatever the checkpoint says; the call wins
        low, high = recipe.processor_pixels
        preset = preset.override(min_pixels=preset.min_pixels or low, max_pixels=preset.max_pixels or high)
    return Checkpoint(path, base, weights_dir, backbone, recipe, preset, card, layout, adapter)


def _fingerprint(ck: Checkpoint) -> str:
    """The checkpoint's weights fingerprint; a task adapter other than the family's default
    (or any adapter merged from jina's folder) is part of it."""
    base = weights_fingerprint(ck.path)
    default = ck.recipe.adapters[0] if ck.recipe.adapters else None
    if ck.jina_layout is None and ck.adapter in (None, default):
        return base
    return jina.fingerprint(base, ck.jina_layout, ck.adapter)


def _record_name(model) -> str:
    """How an index records this model: local directories as absolute paths (so a
    reader in another working directory finds them), ids and built-in names as given."""
    local = Path(os.path.expanduser(str(model)))
    return str(local.resolve()) if str(model) not in BUILTIN_MODELS and local.is_dir() else str(model)


def _load_model(path: Path, backbone: str, preset: Preset, dtype):
    import transformers

    from .qwen_vision import speed_up_vision

    if backbone == "phi3_v":  # Phi-3.5-V ships its own modelling code
        cls, kwargs = transformers.AutoModelForCausalLM, {"trust_remote_code": True, "_attn_implementation": "eager"}
    else:
        cls, kwargs = getattr(transformers, MODEL_CLASSES[backbone]), {}
    try:
        net = cls.from_pretrained(str(path), dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load {backbone} weights from {path}: {e}") from None
    speed_up_vision(net)  # Qwen2-VL: the same vision tower in fewer, larger operations
    return net


def _merge_adapter(net, adapter_path: Path, key_mapping=None):
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a base dependency
        raise ModelLoadError("loading an adapter checkpoint needs peft: pip install peft") from None
    kwargs = {"key_mapping": key_mapping} if key_mapping else {}
    return PeftModel.from_pretrained(net, str(adapter_path), **kwargs).merge_and_unload()


def _processor_dir(path: Path, weights_dir: Path, preset: Preset) -> Path:
    """Processor files: the checkpoint's own if it ships them, else the preset's, else the base's."""
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        return path
    if preset.processor:
        return resolve_model_path(preset.processor)
    return weights_dir
