"""Encoders: VLM2Vec (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, Phi-3.5-V) and CLIP/SigLIP baselines."""
from .base import Encoder, Request
from .factory import SUPPORTED, load_encoder
from .formatting import format_input, image_token

__all__ = ["Encoder", "Request", "SUPPORTED", "format_input", "image_token", "load_encoder"]
