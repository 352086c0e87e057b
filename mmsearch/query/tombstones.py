"""Read access to ``INDEX/store.lmdb`` for an open index: tombstones, ids, thumbnails.

The store is never held open: LMDB allows one open environment per path and
process, and the indexer (delete, compact, resume) may need it in this very
process. Each read opens it read-only for a moment, under `_OPEN_LOCK`.

Tombstones are cached and re-read only when ``data.mdb`` changes (mtime, size or
inode). File times tick coarsely, so a snapshot taken less than `RACY_SECONDS`
after the file's last change is not trusted and the next search checks again
(git's "racily clean" rule).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from mmsearch.errors import StoreError
from mmsearch.store import Store

RACY_SECONDS = 0.1
_OPEN_LOCK = threading.Lock()
T = TypeVar("T")


class StoreView:
    """`tombstones()` -> (version, sorted deleted local rows of each shard)."""

    def __init__(self, path: Path, starts: Sequence[int], ends: Sequence[int]):
        self.path = Path(path)
        self._data_file = str(self.path / "data.mdb")
        self.exists = os.path.isfile(self._data_file)
        self._starts, self._ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        self._lock = threading.Lock()
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._trusted = not self.exists
        self._rows = np.empty(0, dtype=np.int64)
        self._version = 0
        self._loaded = False
        self._per_shard: List[np.ndarray] = self._split(self._rows)

    def read(self, fn: Callable[[Store], T]) -> T:
        """fn(store) with the store open read-only for the duration of the call."""
        with _OPEN_LOCK, Store(self.path, readonly=True) as store:
            return fn(store)

    def tombstones(self) -> Tuple[int, List[np.ndarray]]:
        if not self.exists or (self._trusted and self._stat() == self._stamp):
            return self._version, self._per_shard
        with self._lock:
            stamp = self._stat()
            if not (self._trusted and stamp == self._stamp):
                self._reload(stamp)
            return self._version, self._per_shard

    def _stat(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self._data_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, stamp) -> None:
        read_at = time.time_ns()
        try:
            rows = self.read(lambda store: store.tombstoned_rows())
        except StoreError:
            if not self._loaded:
                raise
            self._trusted = False  # e.g. open for writing in this process: keep the snapshot, retry
            return
        self._loaded = True
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
