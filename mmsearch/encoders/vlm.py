"""The VLM2Vec encoder: a vision-language model used as an embedding model.

Semantics follow the reference exactly (DESIGN.md §3): the input string of
`formatting.format_input`, the final-layer hidden state of the last
non-padding token, L2-normalised. Batching is ours: inputs are grouped by
modality and length (see `base.plan_batches`) instead of one by one.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from .base import Encoder, Request
from .formatting import format_input
from .presets import Preset

QWEN_BACKBONES = ("qwen2_vl", "qwen2_5_vl")
QWEN_MIN_SIDE = 28          # Qwen2-VL rejects images under one 28 px merge window...
QWEN_SMALL_RESIZE = (56, 56)  # ...so the reference resizes those to 56x56


def last_token_pool(hidden: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Hidden state of each row's last real token; correct for left or right padding."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.to(torch.long) * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class VLM2VecEncoder(Encoder):
    def __init__(self, model, processor, *, backbone: str, name: str, preset: Preset, device, dtype,
                 fingerprint: str, max_pixels: Optional[int] = None, processor_dir: Optional[Path] = None):
        self.model = model.eval()
        self.processor = processor
        self.backbone = backbone
        self.name = name
        self.preset = preset
        self.device = device
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.max_pixels = max_pixels
        self.processor_dir = processor_dir  # where the tokenizer/processor files came from
        self.default_batch_size = preset.batch_size or 16
        self.dim = int(_hidden_size(model.config))

    def prepare_image(self, image: Image.Image) -> Image.Image:
        if self.preset.image_size is not None:
            image = image.resize(tuple(self.preset.image_size), Image.BICUBIC)
        if self.backbone in QWEN_BACKBONES and min(image.size) < QWEN_MIN_SIDE:
            image = image.resize(QWEN_SMALL_RESIZE, Image.BICUBIC)
        return image

    def format(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        return format_input(self.backbone, request.text, request.instruction, request.image is not None)

    def processor_inputs(self, requests: Sequence[Request]) -> dict:
        """Tokenised, padded model inputs for one batch (everything the processor returns)."""
        texts = [self.format(r) for r in requests]
        images = [self.prepare_image(r.image) for r in requests if r.image is not None]
        if self.backbone == "phi3_v":
            return _phi3v_collate(self.processor, texts, [self.prepare_image(r.image) if r.image else None
                                                          for r in requests])
        kwargs = dict(text=texts, return_tensors="pt", padding=True)
        if images:
            kwargs["images"] = images
        return dict(self.processor(**kwargs))

    def model_inputs(self, requests: Sequence[Request]) -> dict:
        """`processor_inputs` on the encoder's device, pixel values in its dtype."""
        import torch

        batch = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in self.processor_inputs(requests).items()}
        if "pixel_values" in batch and torch.is_floating_point(batch["pixel_values"]):
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return batch

    def embed(self, batch: dict) -> "torch.Tensor":
        """L2-normalised float32 embeddings of a `model_inputs` batch: the last real
        token's final hidden state. Differentiable (the trainer calls it with grad)."""
        import torch

        pooled = last_token_pool(self.final_hidden_states(batch), batch["attention_mask"]).float()
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    def encode_batch(self, requests: Sequence[Request]) -> np.ndarray:
        import torch

        batch = self.model_inputs(requests)
        with torch.inference_mode():
            pooled = self.embed(batch)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def final_hidden_states(self, batch: dict) -> "torch.Tensor":
        """Final-layer hidden states. The inner model skips the LM head (a vocab-sized
        matmul per token that the embedding never uses); its last_hidden_state is
        exactly hidden_states[-1] of the full model."""
        inner = getattr(self.model, "model", None)
        if self.backbone != "phi3_v" and inner is not None:
            return inner(**batch, return_dict=True).last_hidden_state
        out = self.model(**batch, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1]


def _hidden_size(config) -> int:
    for cfg in (getattr(config, "text_config", None), config):
        if cfg is not None and getattr(cfg, "hidden_size", None):
            return cfg.hidden_size
    raise ValueError(f"cannot find hidden_size in config of type {config.model_type}")


def _phi3v_collate(processor, texts: List[str], images: List[Optional[Image.Image]]) -> dict:
    """Phi-3.5-V's processor takes one prompt at a time; pad and stack like the reference."""
    import torch

    parts = [processor(t, [im] if im is not None else None, return_tensors="pt") for t, im in zip(texts, images)]
    pad_id = processor.tokenizer.pad_token_id or 0
    longest = max(p["input_ids"].shape[1] for p in parts)
    ids = torch.full((len(parts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(parts), longest), dtype=torch.long)
    for i, p in enumerate(parts):  # right padding, as the reference collator
        n = p["input_ids"].shape[1]
        ids[i, :n] = p["input_ids"][0]
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    with_image = [p for p in parts if "pixel_values" in p]
    if with_image:
        crops = max(p["pixel_values"].shape[1] for p in with_image)
        pv = [torch.nn.functional.pad(p["pixel_values"], (0, 0, 0, 0, 0, 0, 0, crops - p["pixel_values"].shape[1]))
              for p in with_image]
        batch["pixel_values"] = torch.cat(pv)
        batch["image_sizes"] = torch.cat([p["image_sizes"] for p in with_image])
    return batch
