"""IVF shards filled from one trained template, searched as the one index they slice.

Shards split a collection by rows for building, resuming and compacting, not for
searching. Every IVF shard is filled from the index's trained template
(``INDEX/trained.faiss``): the same coarse quantizer and codebooks, so its inverted
lists are slices of the lists a single build would have made. Searched one by one,
shards repeat the per-query work that does not shrink with a shard: the coarse
quantizer, the fast-scan look-up tables, the refine depth ``k * k_factor``. Four shards
cost two to three times one (benchmarks/shards.py). Joining the lists at open gives the
single index back: the same results as a one-shard build, at its speed.

The price is memory and open time: the joined copy lives in RAM (the shard files stay
memory-mapped beside it, untouched unless a search falls back to them) and every code is
copied once. So shards are joined only when their index files fit in half the memory
available at the first search (`join_budget`); `Index(join_shards=False)` never joins.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import faiss
import numpy as np

from .shard import Shard


def join_budget() -> int:
    """Bytes of shard index files that may be joined: half the memory now available."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf figures here: do not risk it
        return 0


def join_shards(shards: Sequence[Shard], template: faiss.Index) -> Optional["JoinedShard"]:
    """One searchable shard over `shards`, or None when they cannot be joined: fewer than
    two, compact codes, rows not contiguous, or not IVF (optionally under a flat refine
    stage) with the template's quantizer. `template`: a fresh copy of the trained, empty
    index (it becomes the joined index)."""
    if len(shards) < 2 or not all(_joinable(s) for s in shards):
        return None
    if any(b.id_start != a.id_start + a.rows for a, b in zip(shards, shards[1:])):
        return None
    joined = template  # filled in place: the caller hands over a fresh copy
    ivf = _ivf(joined)
    if ivf is None or not all(_same_quantizer(ivf, _ivf(s.searched_index)) for s in shards):
        return None
    refine = isinstance(faiss.downcast_index(joined), faiss.IndexRefine)  # a view: `joined` owns it
    # A refine stage numbers rows by position (the shard's IndexIDMap maps them): shift
    # each shard's positions by the rows before it. A bare IVF stores global rows.
    offsets = [s.id_start - shards[0].id_start if refine else 0 for s in shards]
    _join_lists(ivf, [_ivf(s.searched_index) for s in shards], offsets)
    if refine:
        refiner = faiss.downcast_index(joined)  # a second proxy; `joined` stays the owner
        storage = faiss.downcast_index(refiner.refine_index)
        for s in shards:
            flat = faiss.downcast_index(faiss.downcast_index(s.searched_index).refine_index)
            storage.add(faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d))
        refiner.ntotal = storage.ntotal
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


def _joinable(shard: Shard) -> bool:
    if shard.compact is not None or not shard.labels_in_order or not shard.has_ivf:
        return False
    inner = faiss.downcast_index(shard.searched_index)
    if isinstance(inner, faiss.IndexRefine):
        base, storage = faiss.downcast_index(inner.base_index), faiss.downcast_index(inner.refine_index)
        return isinstance(base, faiss.IndexIVF) and type(storage) in (faiss.IndexFlat, faiss.IndexFlatIP,
                                                                       faiss.IndexFlatL2)
    return isinstance(inner, faiss.IndexIVF)


def _ivf(index: faiss.Index) -> Optional[faiss.IndexIVF]:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    return index if isinstance(index, faiss.IndexIVF) else None


def _same_quantizer(a: faiss.IndexIVF, b: Optional[faiss.IndexIVF]) -> bool:
    """Whether `b` probes the lists of `a`: the manifest already says every shard was filled
    from the template; this checks it on up to 64 of the centroids (all of them would cost
    nlist x d floats per shard)."""
    if b is None or type(a) is not type(b) or a.nlist != b.nlist or a.code_size != b.code_size:
        return False
    return all(np.array_equal(a.quantizer.reconstruct(int(i)), b.quantizer.reconstruct(int(i)))
               for i in np.unique(np.linspace(0, a.nlist - 1, 64).astype(int)))


def _join_lists(out: faiss.IndexIVF, parts: List[faiss.IndexIVF], offsets: List[int]) -> None:
    """Every list of `out` (empty) filled with the same list of each part, in order.

    Fast-scan lists hold codes packed in blocks of 32; faiss's own merge of such lists
    corrupts memory (faiss 1.15), so they are unpacked, concatenated and packed again here,
    then added to the empty list in one piece (whole blocks, copied as they are)."""
    packer = out.get_CodePacker() if isinstance(faiss.downcast_InvertedLists(out.invlists),
                                                faiss.BlockInvertedLists) else None
    for lst in range(out.nlist):
        ids, codes = [], []
        for part, offset in zip(parts, offsets):
            lists = part.invlists
            m = lists.list_size(lst)
            if m == 0:
                continue
            ids.append(faiss.rev_swig_ptr(lists.get_ids(lst), m).astype(np.int64) + offset)
            codes.append(_flat_codes(lists, lst, m, part.code_size, packer))
        if not ids:
            continue
        ids_all, flat = np.concatenate(ids), np.concatenate(codes)
        packed = flat if packer is None else _pack(flat, packer)
        out.invlists.add_entries(lst, len(ids_all), faiss.swig_ptr(ids_all), faiss.swig_ptr(packed))
    out.ntotal = sum(p.ntotal for p in parts)


def _flat_codes(lists: faiss.InvertedLists, lst: int, m: int, code_size: int, packer) -> np.ndarray:
    """The `m` codes of list `lst`, one row of `code_size` bytes each (unpacked)."""
    if packer is None:
        return faiss.rev_swig_ptr(lists.get_codes(lst), m * code_size).reshape(m, code_size).copy()
    blocks = -(-m // packer.nvec)
    packed = faiss.rev_swig_ptr(lists.get_codes(lst), blocks * packer.block_size)
    flat = np.empty((blocks * packer.nvec, packer.code_size), dtype=np.uint8)
    for b in range(blocks):
        packer.unpack_all(faiss.swig_ptr(packed[b * packer.block_size:]), faiss.swig_ptr(flat[b * packer.nvec:]))
    return flat[:m]


def _pack(flat: np.ndarray, packer) -> np.ndarray:
    blocks = -(-len(flat) // packer.nvec)
    padded = np.zeros((blocks * packer.nvec, packer.code_size), dtype=np.uint8)
    padded[:len(flat)] = flat
    out = np.empty(blocks * packer.block_size, dtype=np.uint8)
    for b in range(blocks):
        packer.pack_all(faiss.swig_ptr(padded[b * packer.nvec:]), faiss.swig_ptr(out[b * packer.block_size:]))
    return out
