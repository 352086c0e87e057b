"""Processors (tokenizer + image processor) for each backbone, with or without torchvision.

Without torchvision, transformers 5 falls back to PIL image processors, which
work, but `Qwen2VLProcessor` (and `AutoProcessor` for Qwen) insists on a video
processor that needs torchvision. mmsearch never encodes video, so on such
machines it builds the same processor class with the video part left out.
With torchvision present, the stock `AutoProcessor` is used. Without it, Qwen's
PIL image processor is swapped for a bit-identical numpy one (`qwen_pixels`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ModelLoadError
from .presets import Preset


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _image_only(processor_cls):
    """`processor_cls` minus its video processor (ProcessorMixin derives its parts from get_attributes)."""

    class ImageOnlyProcessor(processor_cls):
        @classmethod
        def get_attributes(cls):
            return [a for a in super().get_attributes() if a != "video_processor"]

    ImageOnlyProcessor.__name__ = f"ImageOnly{processor_cls.__name__}"
    return ImageOnlyProcessor


def _image_kwargs(backbone: str, preset: Preset) -> dict:
    if backbone in ("qwen2_vl", "qwen2_5_vl") and (preset.min_pixels or preset.max_pixels):
        size = {}
        if preset.min_pixels:
            size["shortest_edge"] = int(preset.min_pixels)
        if preset.max_pixels:
            size["longest_edge"] = int(preset.max_pixels)
        return {"size": size}
    return {}


def _qwen_processor(path: Path, backbone: str, preset: Preset):
    import transformers

    from .qwen_pixels import faster

    name = "Qwen2VLProcessor" if backbone == "qwen2_vl" else "Qwen2_5_VLProcessor"
    image_kwargs = _image_kwargs(backbone, preset)
    if torchvision_available():
        proc = transformers.AutoProcessor.from_pretrained(str(path), **image_kwargs)
    else:
        image_processor = faster(transformers.AutoImageProcessor.from_pretrained(str(path), **image_kwargs))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        proc = _image_only(getattr(transformers, name))(image_processor=image_processor, tokenizer=tokenizer)
    return proc


def load_vlm_processor(path: Path, backbone: str, preset: Preset):
    import transformers

    try:
        if backbone in ("qwen2_vl", "qwen2_5_vl"):
            return _qwen_processor(path, backbone, preset)
        if backbone == "phi3_v":
            return transformers.AutoProcessor.from_pretrained(
                str(path), trust_remote_code=True, num_crops=preset.num_crops or 4
            )
        return transformers.AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot load the {backbone} processor from {path}: {e}") from None


def load_dual_processors(path: Path):
    """Tokenizer and image processor of a CLIP/SigLIP checkpoint."""
    import transformers

    try:
        return (transformers.AutoTokenizer.from_pretrained(str(path)),
                transformers.AutoImageProcessor.from_pretrained(str(path)))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load tokenizer/image processor from {path}: {e}") from None
