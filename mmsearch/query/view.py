"""`IndexView`: one consistent snapshot of an index directory, as one manifest lists it.

The manifest is the single source of truth and is replaced atomically, so a view
built from one manifest never mixes shards of two versions. `Index` swaps in a new
view when manifest.json changes (new shards, a compaction that renumbered rows);
shards listed unchanged are reused, not reopened.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import ImageError, InputError
from mmsearch.images import load_image
from mmsearch.index_format import (INDEX_FILE, Manifest, ShardInfo, join_budget, manifest_path, read_manifest,
                                   read_trained_template, store_path)
from mmsearch.multivector import maxsim_scores

from .filtered import RowMask
from .filters import Filter
from .joined import JoinedShard, join_shards
from .params import SearchParams
from .shard import Shard
from .tombstones import StoreView

_MASK_CACHE_SIZE = 32
Stamp = Optional[Tuple[int, int, int]]
Tombstones = Tuple[int, List[np.ndarray]]  # (version, sorted deleted local rows of each shard)


def manifest_stamp(manifest_path: str) -> Stamp:
    try:
        st = os.stat(manifest_path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _key(info: ShardInfo) -> tuple:
    """What makes a listed shard the same shard: its rows and its files' checksums."""
    return (info.name, info.id_start, info.id_end, tuple(sorted((f, i.sha256) for f, i in info.files.items())))


class IndexView:
    """Shards, tombstones and metadata of one manifest version; thread-safe."""

    def __init__(self, path: Path, previous: Optional["IndexView"] = None, join: bool = True):
        self.path = path
        self._manifest_path = str(manifest_path(path))  # a str: checked on every call, keep it cheap
        self.stamp = manifest_stamp(self._manifest_path)  # taken first: a change while reading shows next time
        self.manifest: Manifest = read_manifest(path)
        reuse = {_key(s.info): s for s in previous.shards} if previous is not None else {}
        self.shards = [reuse.get(_key(info)) or Shard(path, info, self.manifest.model.dim, self.manifest.metric,
                                                      self.manifest.compact)
                       for info in self.manifest.shards]
        self.starts = np.array([s.id_start for s in self.shards], dtype=np.int64)
        self.ends = np.array([s.info.id_end for s in self.shards], dtype=np.int64)
        self.rows = self.manifest.total_rows
        self.keep_max = self.manifest.metric == "inner_product"
        self.dim = self.manifest.model.dim
        self.columns = list(dict.fromkeys(c for s in self.shards for c in s.meta.column_names))
        self.defaults = SearchParams.coerce(self.manifest.faiss.search_params, strict=False)
        self.store = StoreView(store_path(path), self.starts, self.ends)
        self._lock = threading.Lock()
        self._masks: "OrderedDict[tuple, List[Optional[RowMask]]]" = OrderedDict()
        self._join = (join and len(self.shards) > 1 and self.manifest.compact is None
                      and self.manifest.faiss.trained_path is not None)
        self._joined: Optional[JoinedShard] = None
        self._joined_masks: Dict[int, Tuple[list, RowMask]] = {}

    def is_current(self) -> bool:
        return manifest_stamp(self._manifest_path) == self.stamp


    def joined(self) -> Optional[JoinedShard]:
        """The shards as one index (`mmsearch.query.joined`), joined on first use; None
        when they are not joinable or joining is off."""
        if self._joined is not None or not self._join:  # the common case, without the lock
            return self._joined
        with self._lock:
            if self._join and self._joined is None:
                if sum(s.info.files[INDEX_FILE].bytes for s in self.shards) <= join_budget():
                    self._joined = join_shards(self.shards, read_trained_template(self.path, self.manifest.faiss))
                self._join = self._joined is not None
            return self._joined

    def joined_mask(self, masks: List[Optional[RowMask]]) -> Optional[RowMask]:
        """`masks` (one per shard, as `masks` returns them) as one mask over the joined rows."""
        if all(m is None for m in masks):
            return None
        with self._lock:
            entry = self._joined_masks.get(id(masks))
            if entry is not None and entry[0] is masks:
                return entry[1]
        mask = RowMask(np.concatenate([m.mask if m is not None else np.ones(s.rows, dtype=bool)
                                       for s, m in zip(self.shards, masks)]))
        with self._lock:
            if len(self._joined_masks) >= _MASK_CACHE_SIZE:
                self._joined_masks.clear()
            self._joined_masks[id(masks)] = (masks, mask)  # the list is kept: its id stays unique
        return mask

    def check_columns(self, filt: Optional[Filter]) -> None:
        unknown = [c for c in filt.columns if c not in self.columns] if filt is not None else []
        if unknown:
            raise InputError(f"filter columns {unknown} are not in this index; columns: {self.columns}")

    def masks(self, filt: Optional[Filter], tombstones: Optional[Tombstones] = None) -> List[Optional[RowMask]]:
        """Allowed rows of each shard (None: all): the filter's matches minus tombstones
        (`tombstones`: as read by ``store.tombstones()``; default, the current ones)."""
        version, deleted = self.store.tombstones() if tombstones is None else tombstones
        if filt is None and not any(len(d) for d in deleted):
            return [None] * len(self.shards)
        key = (filt.key if filt else None, version)
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        masks = []
        for shard, dead in zip(self.shards, deleted):
            mask = filt.mask(shard.meta) if filt else np.ones(shard.rows, dtype=bool)
            mask[dead] = False
            masks.append(None if mask.all() else RowMask(mask))
        with self._lock:
            self._masks[key] = masks
            while len(self._masks) > _MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        return masks

    # --- rows --------------------------------------------------------------------------

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        """Index into `shards` of each (valid) global row."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def by_shard(self, rows: Sequence[int]) -> Iterator[Tuple[Shard, np.ndarray, np.ndarray]]:
        """(shard, positions in `rows`, local rows) for each shard the rows touch."""
        rows = np.asarray(rows, dtype=np.int64)
        which = self.shard_of(rows)
        bad = (which < 0) | (rows >= self.ends[np.maximum(which, 0)]) if self.shards else rows == rows
        if bad.any():
            raise InputError(f"rows {rows[bad][:5].tolist()} are not in this index; its shards hold rows "
                             f"{[(s.id_start, s.info.id_end) for s in self.shards][:5]}...")
        for i in np.unique(which):
            where = np.flatnonzero(which == i)
            yield self.shards[i], where, rows[where] - self.shards[i].id_start

    def masks_of_rows(self, rows: Sequence[int]) -> List[RowMask]:
        """Per shard, a mask allowing exactly the given global rows (none in shards they miss)."""
        masks = [np.zeros(shard.rows, dtype=bool) for shard in self.shards]
        for shard, _, local in self.by_shard(rows):
            masks[self.shards.index(shard)][local] = True
        return [RowMask(m) for m in masks]

    def records(self, rows: Sequence[int]) -> List[Dict[str, Any]]:
        out: List[Optional[dict]] = [None] * len(rows)
        for shard, where, local in self.by_shard(rows):
            for pos, record in zip(where, shard.meta.take(pa.array(local)).to_pylist()):
                out[pos] = record
        return out

    def vectors(self, rows: Sequence[int], exact: bool = True) -> np.ndarray:
        out = np.empty((len(rows), self.manifest.model.dim), dtype=np.float32)
        for shard, where, local in self.by_shard(rows):
            out[where] = shard.vectors(local, exact=exact)
        return out

    def maxsim(self, query_tokens: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """Exact MaxSim of one query's token vectors (m, token_dim) with each global row's stored
        tokens (a multi-vector index) -> float32 (len(rows),)."""
        out = np.empty(len(rows), dtype=np.float32)
        for shard, where, local in self.by_shard(rows):
            out[where] = maxsim_scores(query_tokens, shard.tokens(), local)
        return out

    def token_matrix(self, row: int) -> np.ndarray:
        """A multi-vector index's stored token vectors of one global row, float32 (n, token_dim)."""
        (shard, _, local), = self.by_shard([row])
        store = shard.tokens()
        lo, hi = store.offsets[local[0]], store.offsets[local[0] + 1]
        values = np.asarray(store.tokens[lo:hi], dtype=np.float32)
        return values if store.scales is None else values * store.scales[lo:hi, None]

    def live_rows_of(self, ids: List[str]) -> np.ndarray:
        """Global rows of item ids; -1 for ids unknown or deleted."""
        if self.store.exists:
            rows = self.store.read(lambda store: store.rows_for(ids))
        else:
            rows = self._scan_ids(ids)
        _, deleted = self.store.tombstones()
        dead = np.concatenate([d + s.id_start for s, d in zip(self.shards, deleted)] + [np.empty(0, np.int64)])
        return np.where(np.isin(rows, dead) | (rows >= self.manifest.next_row), -1, rows)

    def _scan_ids(self, ids: List[str]) -> np.ndarray:
        rows = np.full(len(ids), -1, dtype=np.int64)
        wanted = pa.array(ids, type=pa.string())
        for shard in self.shards:
            pos = pc.index_in(wanted, value_set=shard.meta.column("id").combine_chunks())
            found = pos.is_valid().to_numpy(zero_copy_only=False)
            rows[found] = pos.filter(pos.is_valid()).to_numpy().astype(np.int64) + shard.id_start
        return rows

    def candidate_image(self, record: Mapping[str, Any]):
        """A candidate's image (PIL) from its `image` reference, else its stored
        thumbnail, else None. Relative references resolve against the index folder,
        then ``manifest.extra["image_root"]``, then the working directory."""
        ref = record.get("image")
        if not ref:
            return None
        roots = [self.path, self.manifest.extra.get("image_root"), "."]
        paths = [Path(ref)] if Path(ref).is_absolute() else [Path(r) / ref for r in roots if r]
        for path in paths:
            if path.is_file():
                try:
                    return load_image(path)
                except ImageError:
                    break
        thumb = self.store.read(lambda s: s.get_thumbnail(record["id"])) if self.store.exists else None
        return load_image(thumb) if thumb else None
