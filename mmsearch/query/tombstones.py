"""Deleted rows of an open index, kept current without re-reading them on every search.

The store's tombstones are re-read only when ``store.lmdb/data.mdb`` changes (its
mtime, size or inode). File times tick coarsely, so a snapshot taken less than
`RACY_SECONDS` after the file's last change is not trusted and the next search
checks again (the "racily clean" rule git uses for its index).
"""
from __future__ import annotations

import os
import threading
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from mmsearch.store import Store

RACY_SECONDS = 0.1


class Tombstones:
    """`current()` -> (version, sorted deleted local rows of each shard)."""

    def __init__(self, store: Optional[Store], starts: Sequence[int], ends: Sequence[int]):
        self._store = store
        self._starts, self._ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        self._lock = threading.Lock()
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._trusted = False
        self._rows = np.empty(0, dtype=np.int64)
        self._version = 0
        self._per_shard: List[np.ndarray] = self._split(self._rows)

    def current(self) -> Tuple[int, List[np.ndarray]]:
        if self._store is None:
            return self._version, self._per_shard
        stamp = self._stat()
        if stamp == self._stamp and self._trusted:
            return self._version, self._per_shard
        with self._lock:
            self._reload(stamp)
            return self._version, self._per_shard

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self._store.path / "data.mdb")
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, stamp) -> None:
        read_at = time.time_ns()
        rows = self._store.tombstoned_rows()
        self._trusted = stamp is not None and read_at - stamp[0] > RACY_SECONDS * 1e9
        self._stamp = stamp
        if not np.array_equal(rows, self._rows):
            self._rows = rows
            self._per_shard = self._split(rows)
            self._version += 1

    def _split(self, rows: np.ndarray) -> List[np.ndarray]:
        lo = np.searchsorted(rows, self._starts, side="left")
        hi = np.searchsorted(rows, self._ends, side="left")
        return [rows[a:b] - s for a, b, s in zip(lo, hi, self._starts)]
