"""Encoders: vision-language models embedded by their family's recipe (VLM2Vec V1/V2, GME,
Qwen3-VL-Embedding, jina-embeddings-v4, mmsearch's own) and CLIP/SigLIP baselines."""
from .base import Encoder, Request
from .fde import FdeEncoder
from .factory import SUPPORTED, load_encoder, load_text_encoder
from .formatting import image_token
from .loading import BUILTIN_MODELS
from .recipes import FAMILIES, VISION_SLOT, Recipe, format_input

__all__ = ["BUILTIN_MODELS", "Encoder", "FAMILIES", "FdeEncoder", "Recipe", "Request", "SUPPORTED", "VISION_SLOT", "format_input",
           "image_token", "load_encoder", "load_text_encoder"]
