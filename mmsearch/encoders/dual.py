"""CLIP / SigLIP dual encoders through transformers: the baselines users compare with.

Image+text inputs use UniIR-style score fusion: the sum of the normalised
image and text vectors, normalised again, so one vector still answers an
inner-product search. An instruction, when given, is prepended to the text
("{instruction} {text}", as UniIR does with its prompts); image-only inputs
ignore it, since a dual encoder's image tower has no text input.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .base import Encoder, Request

DUAL_BACKBONES = ("clip", "siglip")


def _features(out) -> "torch.Tensor":
    # transformers 4 returns a tensor, 5 a ModelOutput whose pooler_output is the projection
    return out if hasattr(out, "dim") else out.pooler_output


class DualEncoder(Encoder):
    def __init__(self, model, tokenizer, image_processor, *, backbone: str, recipe, name: str, device, dtype,
                 fingerprint: str, max_pixels: Optional[int] = None, batch_size: Optional[int] = None):
        super().__init__(model, backbone=backbone, recipe=recipe, name=name, device=device, dtype=dtype,
                         fingerprint=fingerprint, max_pixels=max_pixels)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.default_batch_size = batch_size or 64
        self.dim = int(model.config.projection_dim if backbone == "clip" else model.config.text_config.hidden_size)

    def _text(self, r: Request) -> str:
        if r.prompt is not None:  # a VLM prompt: a dual encoder has no image token
            return " ".join(r.prompt.replace("<|image_1|>", " ").replace("<|image_pad|>", " ").replace(
                "<image>", " ").split())
        return " ".join(p for p in (r.instruction or "", r.text or "") if p)

    def _encode_texts(self, texts: List[str]) -> "torch.Tensor":
        # SigLIP was trained on max_length-padded text; CLIP pads to the longest.
        padding = "max_length" if self.backbone == "siglip" else True
        tok = self.tokenizer(texts, padding=padding, truncation=True, return_tensors="pt").to(self.device)
        return _features(self.model.get_text_features(**tok))

    def _encode_images(self, images) -> "torch.Tensor":
        pix = self.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return _features(self.model.get_image_features(pixel_values=pix))

    def encode_batch(self, requests: Sequence[Request]) -> np.ndarray:
        import torch
        from torch.nn.functional import normalize

        n = len(requests)
        out = torch.zeros((n, self.dim), dtype=torch.float32)
        with torch.inference_mode():
            # a verbatim prompt with an image is the VLM protocol's instruction: the image tower alone
            t_idx = [i for i, r in enumerate(requests) if r.text or (r.prompt and r.image is None)]
            i_idx = [i for i, r in enumerate(requests) if r.image is not None]
            if t_idx:
                out[t_idx] += normalize(self._encode_texts([self._text(requests[i]) for i in t_idx]).float(), dim=-1).cpu()
            if i_idx:
                out[i_idx] += normalize(self._encode_images([requests[i].image for i in i_idx]).float(), dim=-1).cpu()
            out = normalize(out, dim=-1)
        return out.numpy()
