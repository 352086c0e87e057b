"""Each backbone's image token: the one place that knows them.

The processor expands the bare token into the image's patch tokens. How a
family places it in its input string is the family's recipe (`recipes`).
"""
from __future__ import annotations

from ..errors import ModelLoadError

IMAGE_TOKENS = {
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
    "qwen3_vl": "<|image_pad|>",
    "llava_next": "<image>",
    "phi3_v": "<|image_1|>",
    "colqwen2": "<|image_pad|>",   # ColQwen2 / ColQwen2.5: a Qwen2(.5)-VL inside (`multivector`)
    "colpali": "<image>",          # ColPali: a PaliGemma inside (`colpali`)
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
