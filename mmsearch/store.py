"""The LMDB store of an index, ``INDEX/store.lmdb``.

One LMDB environment with named databases:

    ids     item id (utf-8)          -> global row (int64)
    cache   cache_key(...) (sha256)  -> embedding (float32 vector, with its dim)
    tomb    global row (int64, BE)   -> deletion time + item id
    thumbs  item id                  -> thumbnail bytes
    meta    key (utf-8)              -> JSON value; b"\0removed\0" + id -> ids compacted away

Tombstones are keyed by row, not by id: an item deleted, re-added (new row) and
deleted again leaves both of its old rows dropped from results.

LMDB commits are crash-safe (a SIGKILL loses at most the open transaction), so the
store keeps LMDB's default syncing. Each batch method is one transaction; the map
starts small and doubles on demand up to `max_map_size`.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, TypeVar, Union

import lmdb
import numpy as np

from mmsearch.errors import InputError, StoreError

DATABASES = ("ids", "cache", "tomb", "thumbs", "meta")
INITIAL_MAP_SIZE = 64 << 20  # 64 MiB; LMDB reserves address space, not disk
MAX_MAP_SIZE = 1 << 40  # 1 TiB

_ROW = struct.Struct("<q")
_ROW_KEY = struct.Struct(">q")  # big-endian so LMDB's byte order is numeric order
_TIME = struct.Struct("<d")
_VEC_HEAD = struct.Struct("<BI")  # format version, dim
_VEC_VERSION = 1
_MAX_ID_BYTES = 480  # LMDB keys are limited to 511 bytes
_REMOVED = b"\x00removed\x00"  # meta key prefix of an id removed by compaction
T = TypeVar("T")


def cache_key(model_key: str, instruction: str, content_hash: Union[str, bytes]) -> bytes:
    """The embedding-cache key of one input: sha256 over the three parts, each
    length-prefixed so that ("ab", "c") and ("a", "bc") cannot collide."""
    digest = hashlib.sha256(b"mmsearch.cache.v1")
    for name, part in (("model_key", model_key), ("instruction", instruction),
                       ("content_hash", content_hash)):
        if isinstance(part, str):
            part = part.encode("utf-8")
        elif not isinstance(part, (bytes, bytearray)):
            raise InputError(f"cache_key: {name} must be str or bytes, got {type(part).__name__}")
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def _id_key(item_id: str) -> bytes:
    if not isinstance(item_id, str) or not item_id:
        raise InputError(f"item ids must be non-empty strings, got {item_id!r}")
    raw = item_id.encode("utf-8")
    # Longer ids are keyed by their digest behind 0xff, a byte UTF-8 never contains.
    return raw if len(raw) <= _MAX_ID_BYTES else b"\xff" + hashlib.sha256(raw).digest()


def _row_value(item_id: str, row: Any) -> bytes:
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or row < 0:
        raise InputError(f"row of id {item_id!r} must be an int >= 0, got {row!r}")
    return _ROW.pack(int(row))


def _encode_vector(key: bytes, vector: Any) -> bytes:
    vec = np.asarray(vector)
    if vec.ndim != 1 or vec.size == 0 or not np.issubdtype(vec.dtype, np.number):
        raise InputError(f"cache entry {key.hex()[:16]}: expected a non-empty 1-d numeric vector, "
                         f"got dtype {vec.dtype}, shape {vec.shape}")
    return _VEC_HEAD.pack(_VEC_VERSION, vec.size) + vec.astype("<f4").tobytes()


def _decode_vector(key: bytes, raw: bytes) -> np.ndarray:
    version, dim = _VEC_HEAD.unpack_from(raw)
    if version != _VEC_VERSION or len(raw) != _VEC_HEAD.size + 4 * dim:
        raise StoreError(f"cache entry {key.hex()[:16]} is malformed (version {version}, dim {dim}, "
                         f"{len(raw)} bytes)")
    return np.frombuffer(raw, dtype="<f4", offset=_VEC_HEAD.size).astype(np.float32)


class Store:
    """``Store(path)`` opens or creates the store; ``Store(path, readonly=True)`` only
    reads and never creates a file. Usable as a context manager; thread-safe."""

    cache_key = staticmethod(cache_key)

    def __init__(self, path: Union[str, os.PathLike], readonly: bool = False,
                 map_size: int = INITIAL_MAP_SIZE, max_map_size: int = MAX_MAP_SIZE):
        self.path = Path(path)
        self.readonly = readonly
        self.max_map_size = max_map_size
        self._lock = threading.RLock()  # set_mapsize needs no open transaction in the process
        self._env = self._open(map_size)
        try:
            self._dbs = {name: self._env.open_db(name.encode(), create=not readonly)
                         for name in DATABASES}
        except lmdb.Error as e:
            self._env.close()
            raise StoreError(f"{self.path} is not an mmsearch store (databases {DATABASES}): {e}") from e

    def _open(self, map_size: int) -> lmdb.Environment:
        try:
            if not self.readonly:
                self.path.mkdir(parents=True, exist_ok=True)
                return lmdb.open(str(self.path), map_size=map_size, max_dbs=len(DATABASES))
            if not (self.path / "data.mdb").is_file():
                raise StoreError(f"no store at {self.path} (missing data.mdb)")
            # LMDB creates lock.mdb even when read-only; without a writable one, read
            # unlocked (a copied or read-only index has no live writer to coordinate).
            lock_file = self.path / "lock.mdb"
            lock = lock_file.is_file() and os.access(lock_file, os.W_OK)
            return lmdb.open(str(self.path), readonly=True, lock=lock, create=False,
                             max_dbs=len(DATABASES), map_size=map_size)
        except lmdb.Error as e:
            raise StoreError(f"cannot open LMDB store {self.path}: {e}") from e

    # --- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._env.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, readonly={self.readonly})"

    @property
    def map_size(self) -> int:
        return self._env.info()["map_size"]

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        with self._lock:
            try:
                txn = self._env.begin()
            except lmdb.MapResizedError:  # another process grew the map: adopt its size
                self._env.set_mapsize(0)
                txn = self._env.begin()
            with txn:
                return fn(txn)

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        with self._lock:
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:  # the transaction was aborted: grow and redo it
                    self._grow()

    def _grow(self) -> None:
        size = self.map_size
        if size >= self.max_map_size:
            raise StoreError(f"{self.path} is full at {size} bytes (max_map_size {self.max_map_size})")
        self._env.set_mapsize(min(2 * size, self.max_map_size))

    # --- ids ---------------------------------------------------------------------------

    def put_ids(self, mapping: Mapping[str, int]) -> None:
        """Map item ids to global rows (one transaction; existing ids are overwritten)."""
        items = sorted((_id_key(i), _row_value(i, r)) for i, r in mapping.items())
        self._write(lambda txn: txn.cursor(db=self._dbs["ids"]).putmulti(items))

    def get_row(self, item_id: str) -> Optional[int]:
        """The row of an id, or None when the id is not in the index."""
        raw = self._read(lambda txn: txn.get(_id_key(item_id), db=self._dbs["ids"]))
        return None if raw is None else _ROW.unpack(raw)[0]

    def rows_for(self, item_ids: Iterable[str]) -> np.ndarray:
        """int64 rows of the ids, -1 where an id is unknown (the faiss convention)."""
        keys = [_id_key(i) for i in item_ids]

        def read(txn: lmdb.Transaction) -> np.ndarray:
            raws = [txn.get(k, db=self._dbs["ids"]) for k in keys]
            return np.array([-1 if r is None else _ROW.unpack(r)[0] for r in raws], dtype=np.int64)
        return self._read(read)

    def delete_ids(self, item_ids: Iterable[str]) -> int:
        """Forget ids (not their rows: see add_tombstones); returns how many existed."""
        keys = [_id_key(i) for i in item_ids]
        return self._write(lambda txn: sum(txn.delete(k, db=self._dbs["ids"]) for k in keys))

    def count_ids(self) -> int:
        return self._read(lambda txn: txn.stat(self._dbs["ids"])["entries"])

    # --- embedding cache ---------------------------------------------------------------

    def cache_get_many(self, keys: Iterable[bytes]) -> Dict[bytes, np.ndarray]:
        """The cached float32 vectors of the keys that are present."""
        keys = list(keys)

        def read(txn: lmdb.Transaction) -> Dict[bytes, np.ndarray]:
            found = ((k, txn.get(k, db=self._dbs["cache"])) for k in keys)
            return {k: _decode_vector(k, raw) for k, raw in found if raw is not None}
        return self._read(read)

    def cache_put_many(self, vectors: Mapping[bytes, np.ndarray]) -> None:
        """Store vectors (as float32) under their cache keys, in one transaction."""
        items = sorted((bytes(k), _encode_vector(bytes(k), v)) for k, v in vectors.items())
        self._write(lambda txn: txn.cursor(db=self._dbs["cache"]).putmulti(items))

    def count_cached(self) -> int:
        return self._read(lambda txn: txn.stat(self._dbs["cache"])["entries"])

    # --- tombstones --------------------------------------------------------------------

    def add_tombstones(self, item_ids: Iterable[str]) -> int:
        """Mark the current rows of these ids deleted; returns how many were newly marked.
        Unknown ids raise InputError and nothing is marked."""
        item_ids = list(item_ids)

        def write(txn: lmdb.Transaction) -> int:
            raws = [txn.get(_id_key(i), db=self._dbs["ids"]) for i in item_ids]
            unknown = [i for i, raw in zip(item_ids, raws) if raw is None]
            if unknown:
                what = f"id {unknown[0]!r} is" if len(unknown) == 1 else f"{len(unknown)} ids are"
                raise InputError(f"cannot delete: {what} not in the index (nothing was deleted), "
                                 f"e.g. {unknown[:5]}")
            stamp = _TIME.pack(time.time())
            return sum(txn.put(_ROW_KEY.pack(_ROW.unpack(raw)[0]), stamp + i.encode("utf-8"),
                               db=self._dbs["tomb"], overwrite=False)
                       for i, raw in zip(item_ids, raws))
        return self._write(write)

    def tombstoned_rows(self) -> np.ndarray:
        """Sorted int64 array of every deleted row."""
        def read(txn: lmdb.Transaction) -> np.ndarray:
            keys = b"".join(txn.cursor(db=self._dbs["tomb"]).iternext(keys=True, values=False))
            return np.frombuffer(keys, dtype=">i8").astype(np.int64)
        return self._read(read)

    def is_tombstoned(self, item_id: str) -> bool:
        """Whether the id's current row is deleted (False for unknown ids)."""
        def read(txn: lmdb.Transaction) -> bool:
            raw = txn.get(_id_key(item_id), db=self._dbs["ids"])
            return raw is not None and txn.get(_ROW_KEY.pack(_ROW.unpack(raw)[0]),
                                               db=self._dbs["tomb"]) is not None
        return self._read(read)

    def clear_tombstones(self, item_ids: Iterable[str]) -> int:
        """Undelete the current rows of these ids; returns how many were deleted."""
        keys = [_id_key(i) for i in item_ids]

        def write(txn: lmdb.Transaction) -> int:
            raws = (txn.get(k, db=self._dbs["ids"]) for k in keys)
            return sum(txn.delete(_ROW_KEY.pack(_ROW.unpack(raw)[0]), db=self._dbs["tomb"])
                       for raw in raws if raw is not None)
        return self._write(write)

    def clear_tombstone_rows(self, rows: Iterable[int]) -> int:
        """Forget tombstones of rows that no longer exist (after compaction)."""
        keys = [_ROW_KEY.pack(int(r)) for r in rows]
        return self._write(lambda txn: sum(txn.delete(k, db=self._dbs["tomb"]) for k in keys))

    # --- ids removed by compaction -------------------------------------------------------
    # Kept in the meta database behind a NUL prefix (JSON meta keys never start with one), so
    # that rerunning the build that made the index does not bring a compacted-away id back.

    def mark_removed(self, item_ids: Iterable[str]) -> None:
        """Remember that these ids were deleted and compacted away."""
        items = sorted((_REMOVED + _id_key(i), b"1") for i in item_ids)
        self._write(lambda txn: txn.cursor(db=self._dbs["meta"]).putmulti(items))

    def is_removed(self, item_id: str) -> bool:
        return self._read(lambda txn: txn.get(_REMOVED + _id_key(item_id), db=self._dbs["meta"])) is not None

    def clear_removed(self, item_ids: Iterable[str]) -> int:
        """Forget the removal of these ids (they were added again); returns how many were marked."""
        keys = [_REMOVED + _id_key(i) for i in item_ids]
        return self._write(lambda txn: sum(txn.delete(k, db=self._dbs["meta"]) for k in keys))

    def removed_ids(self) -> list:
        """Every id marked by `mark_removed` (and not added again since)."""
        def read(txn: lmdb.Transaction) -> list:
            cur, out = txn.cursor(db=self._dbs["meta"]), []
            if cur.set_range(_REMOVED):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(_REMOVED):
                        break
                    if not key[len(_REMOVED):].startswith(b"\xff"):  # a long id is kept as its digest only
                        out.append(key[len(_REMOVED):].decode("utf-8"))
            return out
        return self._read(read)

    # --- thumbnails and small metadata ---------------------------------------------------

    def put_thumbnails(self, thumbnails: Mapping[str, bytes]) -> None:
        items = sorted((_id_key(i), bytes(data)) for i, data in thumbnails.items())
        self._write(lambda txn: txn.cursor(db=self._dbs["thumbs"]).putmulti(items))

    def get_thumbnail(self, item_id: str) -> Optional[bytes]:
        """The thumbnail bytes of an id, or None when it has none."""
        return self._read(lambda txn: txn.get(_id_key(item_id), db=self._dbs["thumbs"]))

    def set_meta(self, key: str, value: Any) -> None:
        """Store a small JSON-serializable value under `key`."""
        data = json.dumps(value, allow_nan=False).encode("utf-8")
        self._write(lambda txn: txn.put(key.encode("utf-8"), data, db=self._dbs["meta"]))

    def get_meta(self, key: str, default: Any = None) -> Any:
        raw = self._read(lambda txn: txn.get(key.encode("utf-8"), db=self._dbs["meta"]))
        return default if raw is None else json.loads(raw)
