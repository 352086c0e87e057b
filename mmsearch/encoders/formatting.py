"""VLM2Vec input strings (DESIGN.md §3): the one place that knows the format.

The reference joins, with one space, the non-empty parts in this order: the
backbone's image token (only when the input has an image), the instruction,
the text. No chat template, no vision start/end tokens: the processor expands
the bare image token into the image's patch tokens.
"""
from __future__ import annotations

from typing import Optional

from ..errors import ModelLoadError

IMAGE_TOKENS = {
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
    "llava_next": "<image>",
    "phi3_v": "<|image_1|>",
}
BACKBONES = tuple(IMAGE_TOKENS)


def image_token(backbone: str) -> str:
    try:
        return IMAGE_TOKENS[backbone]
    except KeyError:
        raise ModelLoadError(
            f"unsupported VLM backbone (config.model_type) {backbone!r}; "
            f"supported: {', '.join(BACKBONES)} (and 'clip', 'siglip' dual encoders)"
        ) from None


def format_input(backbone: str, text: Optional[str], instruction: Optional[str], has_image: bool) -> str:
    """The exact string VLM2Vec feeds the processor for one input."""
    token = image_token(backbone)  # validates the backbone even for text-only inputs
    return " ".join(p for p in (token if has_image else "", instruction or "", text or "") if p)
