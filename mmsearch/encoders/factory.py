"""`load_encoder`: from a model id or directory to a ready Encoder.

The backbone is chosen by `config.model_type`. Adapter-only checkpoints
(`adapter_config.json`, as VLM2Vec's Qwen2-VL and LoRA repos are) load onto
their base through peft and are merged, so inference costs what a plain model
costs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import ModelLoadError
from ..images import DEFAULT_MAX_PIXELS
from .base import Encoder
from .dual import DUAL_BACKBONES, DualEncoder
from .formatting import BACKBONES
from .loading import BUILTIN_MODELS, DEFAULT_MODEL, adapter_base, model_type, resolve_device_dtype, resolve_model_path, weights_fingerprint
from .presets import Preset, preset_for
from .processors import load_dual_processors, load_vlm_processor
from .vlm2vec import VLM2VecEncoder

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
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
    revision: Optional[str] = None,
    max_image_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    **overrides,
) -> Encoder:
    """Load an encoder from a Hugging Face id or a local checkpoint directory
    (None: the small model shipped with mmsearch, "mmsearch-tiny").

    `overrides` replace fields of the checkpoint's preset (see
    `mmsearch.encoders.presets.Preset`): e.g. `image_size=(448, 448)`,
    `max_pixels=...`, `processor="path/to/processor"`, `base_model=...`.
    """
    model = DEFAULT_MODEL if model is None else model
    preset = preset_for(model).override(**overrides)
    path = resolve_model_path(model, revision)
    base = adapter_base(path)  # None for a full (or already merged) checkpoint
    if base is not None and preset.base_model:
        base = preset.base_model  # lets a user point at a local copy of the base
    weights_dir = resolve_model_path(base) if base else path
    backbone = preset.backbone or model_type(weights_dir)
    if backbone not in SUPPORTED:
        raise ModelLoadError(f"unsupported model_type {backbone!r} in {weights_dir}/config.json; "
                             f"supported: {', '.join(SUPPORTED)}")
    dev, dt = resolve_device_dtype(device, dtype)
    net = _load_model(weights_dir, backbone, preset, dt)
    if base is not None:
        net = _merge_adapter(net, path, ADAPTER_KEY_MAPPING.get(backbone))
    net = net.to(dev)
    fingerprint = weights_fingerprint(path)
    name = _record_name(model)
    if backbone in DUAL_BACKBONES:
        tok, improc = load_dual_processors(path)
        return DualEncoder(net, tok, improc, backbone=backbone, name=name, device=dev, dtype=dt,
                           fingerprint=fingerprint, max_pixels=max_image_pixels, batch_size=preset.batch_size)
    proc_dir = _processor_dir(path, weights_dir, preset)
    processor = load_vlm_processor(proc_dir, backbone, preset)
    return VLM2VecEncoder(net, processor, backbone=backbone, name=name, preset=preset, device=dev, dtype=dt,
                          fingerprint=fingerprint, max_pixels=max_image_pixels, processor_dir=proc_dir)


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
