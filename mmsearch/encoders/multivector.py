"""Multi-vector (late-interaction) encoders: one unit vector per token, scored by MaxSim.

ColQwen2 and ColQwen2.5 checkpoints in transformers' `ColQwen2ForRetrieval` layout (a
Qwen2-VL or Qwen2.5-VL as ``model.vlm``, a linear ``embedding_proj_layer`` to 128
dimensions). The rules are colpali_engine's (recipe ``colqwen2`` in `recipes`):

- the model runs Qwen2-VL's own forward from ``input_ids`` (ref: colpali_engine
  models/qwen2/colqwen2/modeling_colqwen2.py `ColQwen2.forward`, a `Qwen2VLModel`), so image
  tokens get M-RoPE grid positions. transformers 5's `ColQwen2ForRetrieval.forward` passes
  ``inputs_embeds`` with ``input_ids=None`` instead and so ends with 1D positions: it is not
  called here.
- every token's last hidden state is projected, L2-normalised and multiplied by the
  attention mask (same forward).
- padding tokens are dropped from the output: colpali_engine keeps them as zero vectors, and a
  zero vector changes MaxSim whenever all of a query token's similarities are negative.

`encode(inputs, multi_vector=True)` returns a list of float32 ``(n_tokens_i, token_dim)``
arrays, one per input, equal to encoding each input alone (batches are padded by the
checkpoint's tokenizer, left or right). There is no single-vector rule in the authors' code,
so `multi_vector=False` (and the single-vector `encode_requests` an index build calls)
raises `InputError` rather than invent one. Scoring and storing token matrices is
`mmsearch.multivector`'s (MaxSim, MUVERA): `flatten_sets(encoder.encode(...))` feeds it.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from .base import EncodeInput, Instruction, Request, plan_batches, progress_bar
from .vlm import VLMEncoder


def vlm_backbone(config) -> str:
    """The model_type of the VLM inside a ColQwen2 checkpoint (qwen2_vl or qwen2_5_vl)."""
    return config.vlm_config.model_type


class MultiVectorEncoder(VLMEncoder):
    """A ColQwen2-style encoder: token matrices, not one vector per input."""

    multi_vector = True

    def __init__(self, model, processor, token_dim: Optional[int] = None, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.token_dim = self.dim = self.full_dim = int(token_dim or model.config.embedding_dim)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.vlm_config.image_token_id)

    def encode(self, inputs: Union[EncodeInput, Iterable[EncodeInput]], instruction: Instruction = None,
               batch_size: Optional[int] = None, show_progress: Optional[bool] = None, side: Optional[str] = None,
               multi_vector: bool = True) -> List[np.ndarray]:
        """Token matrices of the inputs (text or image): float32 (n_tokens_i, token_dim), unit rows.
        A text is formatted as a query (the family has no other text rule), an image as a document."""
        if not multi_vector:
            raise InputError(self._single_vector_message())
        return self.encode_multi_requests(self.to_requests(inputs, instruction, side), batch_size, show_progress)

    def encode_multi_requests(self, requests: Sequence[Request], batch_size: Optional[int] = None,
                              show_progress: Optional[bool] = None) -> List[np.ndarray]:
        """Token matrices of already-resolved requests, in their order."""
        bs = self.default_batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        out: List[Optional[np.ndarray]] = [None] * len(requests)
        batches = plan_batches(requests, bs)
        bar = progress_bar(len(requests), show_progress, len(batches))
        for idx in batches:
            for i, tokens in zip(idx, self.encode_tokens_batch([requests[i] for i in idx])):
                out[i] = tokens
            bar.update(len(idx))
        bar.close()
        return out

    def encode_tokens_batch(self, requests: Sequence[Request]) -> List[np.ndarray]:
        """One planned batch: each input's unmasked token vectors."""
        import torch

        batch = self.model_inputs(requests)
        with torch.inference_mode():
            tokens = self.token_embeddings(batch).float().cpu().numpy()
        keep = batch["attention_mask"].bool().cpu().numpy()
        return [np.ascontiguousarray(t[k], dtype=np.float32) for t, k in zip(tokens, keep)]

    def token_embeddings(self, batch: dict) -> "torch.Tensor":
        """(B, L, token_dim): the projection of every token's last hidden state, L2-normalised,
        times the attention mask (padding rows are zero; `encode_tokens_batch` drops them)."""
        import torch

        hidden = self.model.vlm(**batch, use_cache=False, return_dict=True).last_hidden_state
        proj = self.model.embedding_proj_layer(hidden.to(self.model.embedding_proj_layer.weight.dtype))
        proj = torch.nn.functional.normalize(proj, p=2, dim=-1)
        return proj * batch["attention_mask"].unsqueeze(-1).to(proj.dtype)

    def patch_grid(self, image) -> Tuple[np.ndarray, Tuple[int, int]]:
        """Where a page image's patch tokens are among the token vectors `encode(image)` returns
        (row indices, row-major over the grid) and the grid (rows, cols) they tile: Qwen2-VL
        merges 2 x 2 patches into one image token (`image_processor.merge_size`)."""
        request = self.to_requests([image])[0]
        batch = self.processor_inputs([request])
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].numpy()
        rows = np.flatnonzero(ids == self.image_token_id)
        t, h, w = (int(v) for v in batch["image_grid_thw"][0])
        merge = int(self.processor.image_processor.merge_size)
        grid = (h // merge, w // merge)
        if t != 1 or len(rows) != grid[0] * grid[1]:
            raise InputError(f"{len(rows)} image tokens for a {t} x {grid[0]} x {grid[1]} grid: not one page image")
        return rows, grid

    def encode_batch(self, requests: Sequence[Request]) -> np.ndarray:
        raise InputError(self._single_vector_message())

    def _single_vector_message(self) -> str:
        return (f"{self.name} ({self.family}) is a multi-vector model: it embeds each input as a matrix of "
                f"{self.token_dim}-d token vectors scored by MaxSim, and has no single-vector rule; use "
                f"encode(..., multi_vector=True) or encode_multi_requests()")

