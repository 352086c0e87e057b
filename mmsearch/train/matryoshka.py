"""A Matryoshka adapter: a linear map fitted with the MRL loss on pairs of embeddings.

It gives embeddings of any model the nested structure MRL training gives a model's own
outputs (cf. "Matryoshka-Adaptor", Yoon et al. 2024): after it, the first d components of
``adapt(x, W)`` are a usable d-dimensional embedding. The loss is the trainer's
(`loss.matryoshka_info_nce`), in-batch negatives over (anchor, positive) pairs.

    W = fit_linear_adapter(anchors, positives, sizes=(64, 128, 256, 512))
    corpus = adapt(vectors, W)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError


def fit_linear_adapter(anchors: np.ndarray, positives: np.ndarray, sizes: Sequence[int], steps: int = 300,
                       batch_size: int = 512, lr: float = 1e-3, temperature: float = 0.05, seed: int = 0) -> np.ndarray:
    """A (d, d) float32 matrix W, initialised to the identity, trained so that the prefixes of
    ``normalize(anchor @ W)`` retrieve their positives among the batch (MRL over `sizes`)."""
    import torch

    from .loss import matryoshka_info_nce

    a, p = (np.ascontiguousarray(v, dtype=np.float32) for v in (anchors, positives))
    if a.shape != p.shape or a.ndim != 2:
        raise InputError(f"anchors {a.shape} and positives {p.shape} must be two (n, d) arrays of one shape")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    weight = torch.nn.Parameter(torch.eye(d))
    opt = torch.optim.Adam([weight], lr=lr)
    scale = torch.tensor(1.0 / temperature)
    for _ in range(steps):
        rows = rng.choice(len(a), min(batch_size, len(a)), replace=False)
        q = torch.nn.functional.normalize(torch.from_numpy(a[rows]) @ weight, dim=-1)
        c = torch.nn.functional.normalize(torch.from_numpy(p[rows]) @ weight, dim=-1)
        loss = (matryoshka_info_nce(q, c, scale, sizes) + matryoshka_info_nce(c, q, scale, sizes)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return weight.detach().numpy().astype(np.float32)


def adapt(x: np.ndarray, weight: np.ndarray, block: int = 65_536) -> np.ndarray:
    """``normalize(x @ weight)`` row by row, in blocks; float32."""
    out = np.empty((len(x), weight.shape[1]), dtype=np.float32)
    for lo in range(0, len(x), block):
        y = np.asarray(x[lo:lo + block], np.float32) @ weight
        out[lo:lo + block] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return out
