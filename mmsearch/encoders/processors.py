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


QWEN_PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                   "qwen3_vl": "Qwen3VLProcessor"}


def image_kwargs(backbone: str, preset: Preset) -> dict:
    """Pixel bounds for Qwen's image processor. They go in as min_pixels/max_pixels: a saved
    preprocessor_config.json's min/max_pixels would override a `size` passed instead."""
    if backbone in QWEN_PROCESSORS and (preset.min_pixels or preset.max_pixels):
        bounds = {"min_pixels": preset.min_pixels, "max_pixels": preset.max_pixels}
        return {k: int(v) for k, v in bounds.items() if v}
    return {}


def _qwen_processor(path: Path, backbone: str, preset: Preset, stock: bool = True):
    import transformers

    from .qwen_pixels import faster

    name = QWEN_PROCESSORS[backbone]
    bounds = image_kwargs(backbone, preset)
    if stock and torchvision_available():
        proc = transformers.AutoProcessor.from_pretrained(str(path), **bounds)
    else:
        image_processor = faster(transformers.AutoImageProcessor.from_pretrained(str(path), **bounds))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        proc = _image_only(getattr(transformers, name))(image_processor=image_processor, tokenizer=tokenizer)
    return proc


def load_vlm_processor(path: Path, backbone: str, preset: Preset, stock: bool = True):
    """`stock=False`: a Qwen processor built from the tokenizer and image processor even when
    the checkpoint names another processor class (ColQwen2's takes a text or an image, not both)."""
    import transformers

    try:
        if backbone in QWEN_PROCESSORS:
            return _qwen_processor(path, backbone, preset, stock)
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
