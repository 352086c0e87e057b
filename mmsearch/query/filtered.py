"""Filtered search of one shard: which rows may come back, and how to get k of them.

- Few rows allowed (at most `prefilter_fraction` of the shard): pre-filter, the
  faiss index scans only them through an `IDSelector`.
- Many allowed: post-filter, search `k * rows / allowed * oversample` candidates,
  keep the allowed ones, and grow the candidate count for the queries still short
  until they have k or the index has nothing more to give.
- Either way, a query that still has fewer than min(k, allowed) hits (an IVF that
  did not probe the lists holding them, an HNSW graph walk that missed them) gets a
  complete answer from `Shard.exhaustive`. So a search returns k hits whenever k
  allowed rows exist. Tombstoned rows are simply rows that are not allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np

from mmsearch.errors import InputError

from .merge import Result, empty_result, worst_score
from .params import SearchParams
from .shard import Shard


@dataclass(frozen=True)
class FilterPolicy:
    """When to pre-filter and how hard to oversample when post-filtering."""

    prefilter_fraction: float = 0.05
    oversample: float = 1.5
    growth: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.prefilter_fraction <= 1.0:
            raise InputError(f"prefilter_fraction={self.prefilter_fraction!r}: expected 0..1")
        if self.oversample < 1.0 or self.growth <= 1.0:
            raise InputError(f"oversample={self.oversample!r} must be >= 1 and growth={self.growth!r} > 1")


class RowMask:
    """The allowed local rows of one shard (a bool mask); immutable once built."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self.mask.flags.writeable = False
        self.count = int(mask.sum())

    @cached_property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.mask).astype(np.int64)


def search_shard(shard: Shard, xq: np.ndarray, k: int, knobs: SearchParams,
                 allowed: Optional[RowMask], policy: FilterPolicy) -> Result:
    """Top k of one shard among its allowed rows (all rows when `allowed` is None)."""
    n = len(xq)
    if allowed is None:
        D, I = shard.search(xq, k, knobs)
        return _complete(shard, xq, D, I, k, knobs, None, min(k, shard.rows))
    if allowed.count == 0:
        return empty_result(n, min(k, shard.rows), shard.keep_max)
    D = I = None
    if allowed.count <= policy.prefilter_fraction * shard.rows:
        try:
            D, I = shard.search(xq, k, knobs, local_rows=allowed.rows)
        except RuntimeError:  # this index type takes no selector: post-filter instead
            D = I = None
    if I is None:
        D, I = _postfilter(shard, xq, k, knobs, allowed, policy)
    return _complete(shard, xq, D, I, k, knobs, allowed, min(k, allowed.count))


def _postfilter(shard: Shard, xq: np.ndarray, k: int, knobs: SearchParams, allowed: RowMask,
                policy: FilterPolicy) -> Result:
    n, k = len(xq), min(k, shard.rows)
    outD, outI = empty_result(n, k, shard.keep_max)
    want = min(k, allowed.count)
    fetch = min(shard.rows, math.ceil(k * shard.rows / allowed.count * policy.oversample) + 8)
    todo = np.arange(n)
    while len(todo):
        D, I = shard.search(xq[todo], fetch, knobs)
        valid = I >= 0
        ok = valid & allowed.mask[np.where(valid, I - shard.id_start, 0)]
        first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # allowed hits first, in rank order
        keep = np.take_along_axis(ok, first, axis=1)
        outD[todo] = np.where(keep, np.take_along_axis(D, first, axis=1), worst_score(shard.keep_max))
        outI[todo] = np.where(keep, np.take_along_axis(I, first, axis=1), -1)
        exhausted = (valid.sum(axis=1) < I.shape[1]) | (fetch >= shard.rows)
        todo = todo[(ok.sum(axis=1) < want) & ~exhausted]
        fetch = min(shard.rows, math.ceil(fetch * policy.growth))
    return outD, outI


def _complete(shard: Shard, xq: np.ndarray, D: np.ndarray, I: np.ndarray, k: int, knobs: SearchParams,
              allowed: Optional[RowMask], want: int) -> Result:
    """Redo, exhaustively, the queries that came back with fewer than `want` hits."""
    if want == 0 or I[:, want - 1].min() >= 0:  # rows are sorted, -1 only at their end
        return D, I
    short = np.flatnonzero(I[:, want - 1] < 0)
    redo = shard.exhaustive(np.ascontiguousarray(xq[short]), k, knobs,
                            None if allowed is None else allowed.rows)
    if redo is None:  # nothing more this index can do
        return D, I
    width = D.shape[1]
    D, I = D.copy(), I.copy()
    D[short], I[short] = redo[0][:, :width], redo[1][:, :width]
    return D, I
