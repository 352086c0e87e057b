"""InfoNCE over in-batch negatives, with a fixed or learnable temperature.

Query i's positive is candidate i; every other candidate (the other queries'
positives, then the hard negatives appended after them) is a negative, except
candidates equal to query i's positive (a duplicate in the batch is not a
negative), which `false_negative_mask` removes.

`matryoshka_info_nce` is the Matryoshka (MRL, Kusupati et al. 2022) form: the same loss on
each nested prefix of the embeddings (re-normalised), summed with equal weights, so that
a prefix alone is a usable embedding (what `--dim` truncation at index time relies on).
"""
from __future__ import annotations

import math
from typing import Hashable, Optional, Sequence

import torch
import torch.nn.functional as F

MAX_SCALE = 100.0  # 1/temperature is clamped here, as CLIP does, so a learnt temperature stays >= 0.01


class Temperature(torch.nn.Module):
    """tau = exp(log_tau); learnable when asked (log-parameterised, so it stays positive)."""

    def __init__(self, initial: float, learnable: bool):
        super().__init__()
        self.log_tau = torch.nn.Parameter(torch.tensor(math.log(initial)), requires_grad=learnable)

    def scale(self) -> torch.Tensor:
        """1/tau, clamped to MAX_SCALE."""
        return torch.exp(-self.log_tau).clamp(max=MAX_SCALE)

    @property
    def value(self) -> float:
        return float(1.0 / self.scale().detach())


def false_negative_mask(positives: Sequence[Hashable], candidates: Sequence[Hashable]) -> Optional[torch.Tensor]:
    """(n_queries, n_candidates) bool: True where candidate j equals query i's positive
    but is not candidate i. None when there are no such duplicates."""
    ids: dict = {}
    pid = torch.tensor([ids.setdefault(p, len(ids)) for p in positives], dtype=torch.long)
    cid = torch.tensor([ids.setdefault(c, len(ids)) for c in candidates], dtype=torch.long)
    mask = pid[:, None] == cid[None, :]
    n = min(len(positives), len(candidates))
    mask[torch.arange(n), torch.arange(n)] = False
    return mask if bool(mask.any()) else None


def info_nce(q: torch.Tensor, c: torch.Tensor, scale: torch.Tensor,
             mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross-entropy of softmax(scale * q @ c.T) against the diagonal.

    q (n, d), c (m, d) with m >= n, rows L2-normalised; candidate i is query i's positive.
    """
    logits = scale * (q @ c.T)
    if mask is not None:
        logits = logits.masked_fill(mask.to(logits.device), float("-inf"))
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels)


def matryoshka_dims(sizes: Sequence[int], full: int) -> list:
    """The nested prefix sizes a Matryoshka loss sums over: `sizes` below `full`, and `full`."""
    return sorted({int(d) for d in sizes if 0 < int(d) < full} | {full})


def matryoshka_info_nce(q: torch.Tensor, c: torch.Tensor, scale: torch.Tensor, sizes: Sequence[int],
                        mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """InfoNCE summed over the prefixes ``q[:, :d]``, ``c[:, :d]`` (L2 re-normalised) for each d of
    `sizes` and the full size; plain `info_nce` when `sizes` is empty."""
    if not sizes:
        return info_nce(q, c, scale, mask)
    full = q.shape[1]
    return sum(info_nce(F.normalize(q[:, :d], dim=-1), F.normalize(c[:, :d], dim=-1), scale, mask)
               for d in matryoshka_dims(sizes, full))
