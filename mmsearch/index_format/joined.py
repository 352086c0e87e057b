"""Joining IVF shard indexes filled from one trained template into the one index they slice.

Every IVF shard of an index is a copy of its trained template (``INDEX/trained.faiss``)
filled with its rows: the same coarse quantizer and codebooks. So the lists of all shards,
concatenated list by list, are the lists a single build over every row would have made,
and a refine stage's flat storage is the shards' storages one after another. The search
layer joins shards this way (`mmsearch.query.joined`: searching one index instead of S
repeats none of the per-query work that does not shrink with a shard), and the indexer
calibrates its search defaults on the same joined index.

The joined index lives in RAM: `join_budget` bounds what may be joined.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import faiss
import numpy as np


def join_budget() -> int:
    """Bytes of shard index files that may be joined: half the memory now available."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf figures here: do not risk it
        return 0


def join_ivf(template: faiss.Index, parts: Sequence[faiss.Index], offsets: Sequence[int]) -> Optional[faiss.Index]:
    """`template` (a fresh copy of the trained, empty index; it is filled in place and
    returned) holding every row of `parts`, in order, or None when they cannot be joined.

    `parts`: the shards' indexes without their id maps, each an IVF (labels: the global rows
    it was given) or an IVF under a flat refine stage (labels: positions, shifted here by
    `offsets`, the rows before each part), with the template's quantizer."""
    joined = faiss.downcast_index(template)
    if not (len(parts) and joinable(joined) and all(joinable(p) for p in parts)):
        return None
    ivf = _ivf(joined)
    if not all(_same_quantizer(ivf, _ivf(p)) for p in parts):
        return None
    _join_lists(ivf, [_ivf(p) for p in parts], list(offsets))
    if isinstance(joined, faiss.IndexRefine):
        storage = faiss.downcast_index(joined.refine_index)
        for part in parts:
            flat = faiss.downcast_index(faiss.downcast_index(part).refine_index)
            storage.add(faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d))
        joined.ntotal = storage.ntotal
    return template


def joinable(index: faiss.Index) -> bool:
    """Whether `index` (without an id map) is an IVF, or an IVF under a flat refine stage."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        base, storage = faiss.downcast_index(inner.base_index), faiss.downcast_index(inner.refine_index)
        return isinstance(base, faiss.IndexIVF) and type(storage) in (faiss.IndexFlat, faiss.IndexFlatIP,
                                                                       faiss.IndexFlatL2)
    return isinstance(inner, faiss.IndexIVF)


def positions_label_rows(index: faiss.Index) -> bool:
    """Whether a joinable index labels rows by position (a refine stage) rather than by the
    global rows its IVF was given."""
    return isinstance(faiss.downcast_index(index), faiss.IndexRefine)


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
