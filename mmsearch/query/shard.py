"""One opened shard: its FAISS index (memory-mapped), its meta table, its vectors on demand.

A shard's `IndexIDMap` is unwrapped: the inner index is searched directly and its
labels (storage positions) are translated to global rows here. That lets an
`IDSelector` be built in the inner index's own label space and handed to whichever
level scans codes (faiss ignores a selector given to a refine or pre-transform
level, and `IndexIDMap` cannot translate one through them). Indexes without an id
map (IVF, which stores the global ids itself) return global rows as labels.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

import faiss
import numpy as np
import pyarrow as pa

from mmsearch.errors import IndexFormatError
from mmsearch.index_format import (VECTORS_FILE, CompactSpec, ShardInfo, downcast, first_stage_queries,
                                   first_stage_scores, is_binary, load_shard_tokens, load_shard_vectors, open_shard_index,
                                   open_shard_meta, rescore, vectors_of_stored)
from mmsearch.multivector import TokenStore

from .merge import merge_results
from .modality import read_pages
from .params import SearchParams, build_faiss_params
from .rescore import binary_params

_SCAN_BLOCK = 1 << 15  # rows per block of an exhaustive scan (bounds memory on big shards)
# A bitmap selector when its bits are few per selected id, else a hash-set selector.
_BITMAP_PER_ID, _BITMAP_MIN_BITS = 32, 1 << 16

Result = Tuple[np.ndarray, np.ndarray]


class Shard:
    """Read-only and thread-safe. Local row r is global row ``id_start + r``."""

    def __init__(self, index_dir: Path, info: ShardInfo, dim: int, metric: str,
                 compact: Optional[CompactSpec] = None):
        self.info, self.name = info, info.name
        self.id_start, self.rows = info.id_start, info.rows
        self.metric = metric
        self._index_dir = index_dir
        index = open_shard_index(index_dir, info)
        self.compact = compact  # first stage on truncated / quantised codes, then rescoring (.rescore)
        stored = dim if compact is None else compact.dim
        if index.d != stored:
            raise IndexFormatError(f"shard {info.name}: faiss dimension {index.d}, the manifest "
                                   f"{'stores' if compact else 'model has'} dim {stored}")
        self._attach(index, *_unwrap(index, info))
        self.meta: pa.Table = read_pages(open_shard_meta(index_dir, info))  # legacy pages read as "page"
        self._vectors: Optional[np.ndarray] = None
        self._tokens: Optional[TokenStore] = None

    def _attach(self, index: faiss.Index, inner: faiss.Index, offset: int,
                perm: Optional[np.ndarray] = None, inv: Optional[np.ndarray] = None) -> None:
        """Search `inner` (inside `index`, kept: it owns it); its label l is global row
        perm[l] when a permutation is given, else l + offset."""
        self._index = index
        self._inner, self._offset, self._perm, self._inv = inner, offset, perm, inv
        self.has_ivf = not is_binary(inner) and _find(inner, faiss.IndexIVF) is not None
        self._exact_storage = self.compact is None and _exact_storage(inner)
        self._lock = threading.Lock()
        self._plain_params: Dict[SearchParams, tuple] = {}

    @property
    def searched_index(self) -> faiss.Index:
        """The faiss index searches run on (the shard's, without its id map)."""
        return self._inner

    @property
    def labels_in_order(self) -> bool:
        """Whether the index's labels follow the shard's rows (no permutation)."""
        return self._perm is None

    # --- labels ------------------------------------------------------------------------

    def _to_global(self, labels: np.ndarray) -> np.ndarray:
        if self._perm is not None:
            return np.where(labels >= 0, self._perm[np.maximum(labels, 0)], -1)
        if self._offset == 0:
            return labels
        return np.where(labels >= 0, labels + self._offset, -1)

    def _labels(self, local_rows: np.ndarray) -> np.ndarray:
        if self._inv is not None:
            return self._inv[local_rows]
        return local_rows + (self.id_start - self._offset)

    def _selector(self, local_rows: np.ndarray) -> Tuple[faiss.IDSelector, list]:
        labels = self._labels(local_rows)
        top = int(labels.max()) + 1 if len(labels) else 0
        if top <= _BITMAP_PER_ID * len(labels) + _BITMAP_MIN_BITS:  # cheaper to build than a hash set
            bits = np.zeros(top, dtype=bool)
            bits[labels] = True
            bitmap = np.packbits(bits, bitorder="little")
            return faiss.IDSelectorBitmap(bitmap), [bitmap]
        return faiss.IDSelectorBatch(np.ascontiguousarray(labels, dtype=np.int64)), []

    # --- search ------------------------------------------------------------------------

    def search(self, xq: np.ndarray, k: int, knobs: SearchParams,
               local_rows: Optional[np.ndarray] = None, exhaustive: bool = False) -> Result:
        """Top `k` of this shard as (D, global rows); only `local_rows` when given
        (a faiss IDSelector pre-filter). faiss errors (e.g. an index type without
        selector support) propagate as RuntimeError."""
        k = max(1, min(int(k), self.rows))
        if self.compact is not None:
            return self._two_stage(xq, k, knobs, local_rows)
        if local_rows is None and not exhaustive:
            params = self._cached_params(knobs)
            D, labels = self._inner.search(xq, k, params=params)
            return D, self._to_global(labels)
        sel, keep = self._selector(local_rows) if local_rows is not None else (None, [])
        params, keep2 = build_faiss_params(self._inner, knobs, sel, exhaustive)
        D, labels = self._inner.search(xq, k, params=params)
        del keep, keep2  # the selector and its bitmap lived through the search
        return D, self._to_global(labels)

    def _two_stage(self, xq: np.ndarray, k: int, knobs: SearchParams, local_rows: Optional[np.ndarray]) -> Result:
        """Compact codes first (`oversample * k` candidates), then exact rescoring of those
        against the stored full vectors (unless rescoring is off for the index or the call)."""
        spec = self.compact
        rescoring = spec.rescore if knobs.rescore is None else knobs.rescore
        depth = spec.depth(k, self.rows, knobs.oversample, rescoring)
        xc = first_stage_queries(spec, xq)
        sel, keep = self._selector(local_rows) if local_rows is not None else (None, [])
        if is_binary(self._inner):
            params = binary_params(self._inner, knobs, sel)
        else:
            params, keep2 = build_faiss_params(self._inner, knobs, sel)
            keep.append(keep2)
        D, labels = self._inner.search(xc, depth, params=params)
        del keep
        I = self._to_global(labels)
        if not rescoring:
            return first_stage_scores(spec, D), I
        return rescore(xq, I, lambda rows: self.vectors(rows - self.id_start), k, self.keep_max)

    def _cached_params(self, knobs: SearchParams):
        entry = self._plain_params.get(knobs)
        if entry is None:  # selector-free trees are read-only during search: share them
            entry = self._plain_params.setdefault(knobs, build_faiss_params(self._inner, knobs))
        return entry[0]

    def exhaustive(self, xq: np.ndarray, k: int, knobs: SearchParams,
                   local_rows: Optional[np.ndarray] = None) -> Optional[Result]:
        """The complete top `k` over `local_rows` (all rows if None) when the ANN came
        back short: every IVF list probed, or a blockwise exact scan of the vectors
        the index can reconstruct. None when neither is possible."""
        if self.has_ivf:
            return self.search(xq, k, knobs, local_rows, exhaustive=True)
        if local_rows is None:
            local_rows = np.arange(self.rows, dtype=np.int64)
        parts = []
        for start in range(0, len(local_rows), _SCAN_BLOCK):
            block = local_rows[start:start + _SCAN_BLOCK]
            try:
                vectors = self.vectors(block, exact=False)
            except IndexFormatError:
                return None
            D, pos = faiss.knn(xq, vectors, min(k, len(block)), metric=self._faiss_metric)
            parts.append((D, np.where(pos >= 0, block[np.maximum(pos, 0)] + self.id_start, -1)))
        return merge_results(parts, k, self.keep_max)

    @property
    def keep_max(self) -> bool:
        return self.metric == "inner_product"

    @property
    def _faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.keep_max else faiss.METRIC_L2

    # --- vectors -----------------------------------------------------------------------

    def vectors(self, local_rows: np.ndarray, exact: bool = True) -> np.ndarray:
        """float32 (len(local_rows), d). `exact`: the stored full vectors (vectors.npy,
        or the index's own storage when it is an uncompressed flat one); otherwise
        whatever the index can reconstruct (compressed codes decoded), else vectors.npy."""
        local_rows = np.asarray(local_rows, dtype=np.int64)
        sources = (self._from_file, self._from_index) if exact else (self._from_index, self._from_file)
        for source in sources:
            out = source(local_rows, exact)
            if out is not None:
                return out
        what = "exact vectors" if exact else "vectors"
        raise IndexFormatError(f"shard {self.name}: no {what} to rescore with: it has no {VECTORS_FILE} and its "
                               f"faiss index cannot reconstruct {'uncompressed ' if exact else ''}vectors "
                               f"(rebuild the index with stored vectors)")

    def tokens(self) -> TokenStore:
        """A multi-vector shard's token vectors (memory-mapped on first use) for MaxSim."""
        if self._tokens is None:
            if not self.info.has_tokens:
                raise IndexFormatError(f"shard {self.name} holds no token vectors (not a multi-vector index)")
            with self._lock:
                if self._tokens is None:
                    self._tokens = load_shard_tokens(self._index_dir, self.info).store()
        return self._tokens

    def _from_file(self, local_rows: np.ndarray, _exact: bool) -> Optional[np.ndarray]:
        if not self.info.has_vectors:
            return None
        if self._vectors is None:
            with self._lock:
                if self._vectors is None:
                    self._vectors = load_shard_vectors(self._index_dir, self.info, mmap=True)
        order = np.argsort(local_rows, kind="stable")  # sorted reads of the memory map
        out = np.empty((len(local_rows), self._vectors.shape[1]), dtype=np.float32)
        out[order] = vectors_of_stored(self._vectors[local_rows[order]], self.compact)
        return out

    def _from_index(self, local_rows: np.ndarray, exact: bool) -> Optional[np.ndarray]:
        if self.has_ivf or self.compact is not None or (exact and not self._exact_storage):
            return None  # compact codes are not the vectors a query is compared with
        try:
            out = self._inner.reconstruct_batch(np.ascontiguousarray(self._labels(local_rows)))
        except RuntimeError:
            return None
        return np.ascontiguousarray(out, dtype=np.float32)


def _unwrap(index: faiss.Index, info: ShardInfo):
    """(inner index, label offset, label->global perm or None, local->label perm or None)."""
    index = downcast(index)
    if not hasattr(index, "id_map"):  # IVF stores global ids; a bare Flat/HNSW starts at 0
        return index, 0, None, None
    inner = downcast(index.index)
    id_map = faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    local = id_map - info.id_start
    if np.array_equal(local, np.arange(info.rows, dtype=np.int64)):
        return inner, info.id_start, None, None
    inv = np.empty(info.rows, dtype=np.int64)
    inv[local] = np.arange(info.rows, dtype=np.int64)
    return inner, 0, id_map, inv


def _find(index: faiss.Index, kind) -> Optional[faiss.Index]:
    index = faiss.downcast_index(index)
    if isinstance(index, kind):
        return index
    for attr in ("base_index", "index"):
        sub = getattr(index, attr, None)
        if isinstance(sub, faiss.Index):
            return _find(sub, kind)
    return None


def _exact_storage(index: faiss.Index) -> bool:
    """Whether `index.reconstruct` returns the vectors as added (uncompressed float32)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return _exact_storage(index.refine_index)
    if isinstance(index, faiss.IndexHNSW):
        return _exact_storage(index.storage)
    return type(index) in (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2)
