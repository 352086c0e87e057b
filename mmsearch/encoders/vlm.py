"""The vision-language encoder: a VLM used as an embedding model, by its family's recipe.

What the model sees and how its output becomes a vector are the recipe's
(`recipes.Recipe`: input string, position rule, pooling, Matryoshka size); this
class runs them. Batching is ours: inputs are grouped by modality and length
(see `base.plan_batches`), padded, and pooled over their real tokens, so an
input gets the embedding it has alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..images import smart_resize
from .base import Encoder, Request
from .pooling import pool, positions_1d
from .presets import Preset
from .recipes import QWEN_BACKBONES, Recipe

QWEN_MIN_SIDE = 28          # Qwen2-VL rejects images under one 28 px merge window...
QWEN_SMALL_RESIZE = (56, 56)  # ...so the reference resizes those to 56x56


class VLMEncoder(Encoder):
    def __init__(self, model, processor, *, backbone: str, recipe: Recipe, name: str, preset: Preset, device,
                 dtype, fingerprint: str, max_pixels: Optional[int] = None, processor_dir: Optional[Path] = None,
                 dim: Optional[int] = None, tasks: Optional[Mapping[str, Tuple[str, str]]] = None):
        super().__init__(model, backbone=backbone, recipe=recipe, name=name, device=device, dtype=dtype,
                         fingerprint=fingerprint, max_pixels=max_pixels)
        self.processor = processor
        self.preset = preset
        self.processor_dir = processor_dir  # where the tokenizer/processor files came from
        self.default_batch_size = preset.batch_size or 16
        self.model_tasks = dict(tasks or {})
        self.full_dim = int(_hidden_size(model.config))
        self.dim = int(dim or self.full_dim)

    def prepare_image(self, image: Image.Image) -> Image.Image:
        if self.preset.image_size is not None:
            image = image.resize(tuple(self.preset.image_size), Image.BICUBIC)
        if self.backbone in QWEN_BACKBONES and min(image.size) < QWEN_MIN_SIDE:
            image = image.resize(QWEN_SMALL_RESIZE, Image.BICUBIC)
        bounds = self.recipe.resize
        if bounds is not None:  # the family's own resize before the processor (GME, Qwen3-VL)
            w, h = image.size
            h2, w2 = smart_resize(h, w, factor=bounds.factor, min_pixels=bounds.min_pixels,
                                  max_pixels=bounds.max_pixels)
            if (w2, h2) != (w, h):
                image = image.resize((w2, h2), Image.BICUBIC)
        return image

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
            if not self.recipe.processor_resizes:
                kwargs["do_resize"] = False  # already resized by the family's own rule
        return dict(self.processor(**kwargs))

    def model_inputs(self, requests: Sequence[Request]) -> dict:
        """`processor_inputs` on the encoder's device, pixel values in its dtype."""
        import torch

        batch = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in self.processor_inputs(requests).items()}
        if "pixel_values" in batch and torch.is_floating_point(batch["pixel_values"]):
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return batch

    def embed(self, batch: dict) -> "torch.Tensor":
        """L2-normalised float32 embeddings of a `model_inputs` batch, pooled by the recipe
        and cut to `dim`. Differentiable (the trainer calls it with grad)."""
        import torch

        hidden = self.final_hidden_states(batch)
        pooled = pool(self.recipe.pooling, hidden, batch, self.model.config)
        if self.recipe.image_pooling is not None and "pixel_values" in batch:
            has_image = (batch["input_ids"] == self.model.config.image_token_id).any(dim=1)
            by_image = pool(self.recipe.image_pooling, hidden, batch, self.model.config)
            pooled = torch.where(has_image.unsqueeze(1), by_image, pooled)
        pooled = pooled.float()[:, : self.dim]
        return torch.nn.functional.normalize(pooled, p=2, dim=-1) if self.recipe.normalize else pooled

    def encode_batch(self, requests: Sequence[Request]) -> np.ndarray:
        import torch

        batch = self.model_inputs(requests)
        with torch.inference_mode():
            pooled = self.embed(batch)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def final_hidden_states(self, batch: dict, positions: Optional[str] = None) -> "torch.Tensor":
        """Final-layer hidden states under a position rule (default: the recipe's; a generative
        judge passes "mrope", transformers' own). The inner model skips the LM head (a
        vocab-sized matmul per token the embedding never uses); its last_hidden_state is
        exactly hidden_states[-1] of the full model."""
        if (positions or self.recipe.positions) == "1d" and self.backbone in QWEN_BACKBONES:
            batch = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
            batch["position_ids"] = positions_1d(batch["attention_mask"])
        inner = getattr(self.model, "model", None)
        if self.backbone != "phi3_v" and inner is not None:
            return inner(**batch, return_dict=True).last_hidden_state
        out = self.model(**batch, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1]


def _hidden_size(config) -> int:
    inner = getattr(config, "vlm_config", None)  # ColQwen2: the VLM's config is nested
    for cfg in (getattr(config, "text_config", None), getattr(inner, "text_config", None), config):
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
