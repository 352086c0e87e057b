"""IVF shards filled from one trained template, searched as the one index they slice.

Shards split a collection by rows for building, resuming and compacting, not for
searching. Searched one by one, shards repeat the per-query work that does not shrink
with a shard: the coarse quantizer, the fast-scan look-up tables, the refine depth
``k * k_factor``. Four shards cost two to three times one (benchmarks/shards.py). Their
lists joined (`mmsearch.index_format.joined`) give the single index back: the same
results as a one-shard build, at its speed.

The price is memory and open time: the joined copy lives in RAM (the shard files stay
memory-mapped beside it, untouched unless a search falls back to them) and every code is
copied once, at the first search. So shards are joined only when their index files fit
`join_budget`; `Index(join_shards=False)` never joins.
"""
from __future__ import annotations

from typing import Optional, Sequence

import faiss
import numpy as np

from mmsearch.index_format import join_ivf, positions_label_rows

from .shard import Shard


def join_shards(shards: Sequence[Shard], template: faiss.Index) -> Optional["JoinedShard"]:
    """One searchable shard over `shards`, or None when they cannot be joined: fewer than
    two, compact codes, rows not contiguous or permuted, or indexes `join_ivf` refuses.
    `template`: a fresh copy of the trained, empty index (it becomes the joined index)."""
    if len(shards) < 2 or any(s.compact is not None or not s.labels_in_order or not s.has_ivf for s in shards):
        return None
    if any(b.id_start != a.id_start + a.rows for a, b in zip(shards, shards[1:])):
        return None
    refine = positions_label_rows(template)
    offsets = [s.id_start - shards[0].id_start if refine else 0 for s in shards]
    joined = join_ivf(template, [s.searched_index for s in shards], offsets)
    if joined is None:
        return None
    return JoinedShard(shards, joined, offset=shards[0].id_start if refine else 0)


class JoinedShard(Shard):
    """A `Shard` whose index is the joined copy; rows and vectors are its parts'."""

    def __init__(self, parts: Sequence[Shard], index: faiss.Index, offset: int):
        first = parts[0]
        self.parts = list(parts)
        self.info, self.name = None, f"{first.name}..{parts[-1].name} (joined)"
        self.id_start, self.rows = first.id_start, sum(p.rows for p in parts)
        self.metric, self.compact, self.meta = first.metric, None, None
        self._index_dir, self._vectors, self._tokens = None, None, None
        self._attach(index, index, offset)

    def vectors(self, local_rows: np.ndarray, exact: bool = True) -> np.ndarray:
        local_rows = np.asarray(local_rows, dtype=np.int64)
        out: Optional[np.ndarray] = None
        for part in self.parts:
            lo = part.id_start - self.id_start
            here = (local_rows >= lo) & (local_rows < lo + part.rows)
            if here.any():
                got = part.vectors(local_rows[here] - lo, exact)
                if out is None:
                    out = np.empty((len(local_rows), got.shape[1]), dtype=np.float32)
                out[here] = got
        return out if out is not None else np.empty((0, 0), dtype=np.float32)
