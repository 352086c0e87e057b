"""The worker side of the Ray engine: decode tasks, encoder actors, write tasks.

Each is a thin adapter from Ray Data batches to the indexer's own stages
(`partitions.read_partition`, `routing.Router`, `prepare.prepare`,
`encoding.encode_chunk`, `writer.write_rows`). Workers never write the manifest
or the store: they write staging files and unlisted shards, and send the driver
one small summary row per record.

Summary rows (the columns of `ROW_COLUMNS`), keyed by (part, ordinal):
    kind  ok (encoded, its row is in staging `file`), reject (`reason`), skip,
          end (ordinal = the partition's record count; `info` = read/decode time),
          stats (one per encoded batch; `info` = model time and cache counts)
"""
from __future__ import annotations

import hashlib
import json
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import IndexMismatchError
from ..index_format import Manifest
from .encoding import encode_chunk
from .partitions import Partition, read_partition
from .prepare import Rejection, prepare
from .routing import REJECT, SKIP, Router
from .staging import take_rows, vectors_of, write_staged
from .writer import meta_table_of, write_rows

OK, REJECTED, SKIPPED, ITEM, END, STATS = "ok", "reject", "skip", "item", "end", "stats"
ROW_COLUMNS = ("part", "ordinal", "kind", "id", "claims", "updated", "where", "reason", "file", "info")


class KnownIds:
    """The ids already in the index, as sorted 16-byte digests: compact to ship to every
    decode task, exact in practice (a collision needs 2^64 ids)."""

    def __init__(self, ids: Iterable[str] = ()):
        digests = np.array([self._digest(i) for i in ids], dtype="S16")
        self.digests = np.unique(digests)

    @staticmethod
    def _digest(item_id: str) -> bytes:
        return hashlib.blake2b(item_id.encode("utf-8"), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self.digests)

    def __contains__(self, item_id: str) -> bool:
        if not len(self.digests):
            return False
        d = np.array(self._digest(item_id), dtype="S16")
        i = int(np.searchsorted(self.digests, d))
        return i < len(self.digests) and self.digests[i] == d


@dataclass(frozen=True)
class Job:
    """What the workers of one run need, shipped once through the object store."""

    index_dir: str
    partitions: Tuple[Partition, ...]
    source_options: Mapping[str, Any]
    instructions: Mapping[str, str]
    max_image_pixels: Optional[int]
    thumbnails: bool
    existing: str
    model: str
    device: str
    dtype: str
    weight_hash: Optional[str]
    batch_size: Optional[int]
    family: Optional[str] = None         # the encoder's recipe, its Matryoshka size and task adapter
    dim: Optional[int] = None
    adapter: Optional[str] = None
    known: KnownIds = field(default_factory=KnownIds)
    cache: Any = None                    # a CacheReader actor handle, or None


def _resolve(value):
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _text(value) -> str:
    return "" if value is None else str(value)


def _row(values: dict) -> Dict[str, Any]:
    """A summary row with every column, so that all blocks share one Arrow schema."""
    row = {name: _text(values.get(name)) for name in ROW_COLUMNS}
    row.update(part=int(values["part"]), ordinal=int(values["ordinal"]), claims=bool(values.get("claims")),
               updated=bool(values.get("updated")), payload=values.get("payload") or b"")
    return row


def _columns(rows: List[dict]) -> Dict[str, np.ndarray]:
    out = {}
    for name in ROW_COLUMNS:
        values = [_row(r)[name] for r in rows]
        out[name] = np.array(values, dtype=object if isinstance(values[0], str) else None)
    return out


# --- decode: CPU tasks, one per partition ------------------------------------------------

def decode_partition(row: Dict[str, Any], job) -> Iterator[Dict[str, Any]]:
    """Read, route and prepare the records of one partition (a Ray Data flat_map UDF):
    one row per record, in read order, then an END row with the record count."""
    job = _resolve(job)
    part = job.partitions[int(row["part"])]
    router = Router(job.existing, job.known.__contains__)
    records = read_partition(part, job.source_options)
    spent = {"read": 0.0, "decode": 0.0}
    ordinal = 0
    while True:
        t0 = time.perf_counter()
        rec = next(records, None)
        spent["read"] += time.perf_counter() - t0
        if rec is None:
            break
        yield _row(_decoded_row(job, part.index, ordinal, rec, router, spent))
        ordinal += 1
    yield _row({"part": part.index, "ordinal": ordinal, "kind": END, "info": json.dumps(spent)})


def _decoded_row(job: Job, part: int, ordinal: int, rec, router: Router, spent: dict) -> dict:
    route = router.route(rec)
    row = {"part": part, "ordinal": ordinal, "id": rec.item.id if rec.item else rec.id, "where": rec.where,
           "claims": route.claims, "updated": route.updated}
    if route.action == REJECT:
        return dict(row, kind=REJECTED, reason=route.rejection.reason)
    if route.action == SKIP:
        return dict(row, kind=SKIPPED)
    t0 = time.perf_counter()
    prepared = prepare(rec, job.instructions, job.max_image_pixels, job.thumbnails)
    spent["decode"] += time.perf_counter() - t0
    if isinstance(prepared, Rejection):
        return dict(row, kind=REJECTED, reason=prepared.reason)
    return dict(row, kind=ITEM, payload=pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))


# --- encode: an actor pool (one actor per GPU, or CPU actors) ------------------------------

class EncodeActor:
    """Loads the encoder once; encodes the prepared items of each batch through the cache
    and stages them; passes every other row through (a Ray Data callable class)."""

    def __init__(self, job):
        from ..encoders import load_encoder

        self.job = _resolve(job)
        self.encoder = load_encoder(self.job.model, device=self.job.device, dtype=self.job.dtype,
                                    max_image_pixels=self.job.max_image_pixels, family=self.job.family,
                                    dim=self.job.dim, adapter=self.job.adapter)
        if self.job.weight_hash and self.encoder.fingerprint != self.job.weight_hash:
            raise IndexMismatchError(f"the encoder actor loaded {self.job.model!r} with weights "
                                     f"{self.encoder.fingerprint}, the run uses {self.job.weight_hash}: every node "
                                     f"must see the same checkpoint")
        self.encoded_any = False

    def _cache_get(self, keys: List[bytes]):
        import ray

        return ray.get(self.job.cache.get_many.remote(keys))

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = {name: np.array(batch[name], dtype=object if batch[name].dtype.kind in "OUS" else None)
               for name in ROW_COLUMNS}  # object arrays: a longer string must not be cut to fit
        items = [i for i, kind in enumerate(batch["kind"]) if kind == ITEM]
        if not items:
            return out
        chunk = [pickle.loads(batch["payload"][i]) for i in items]
        cache_get = self._cache_get if self.job.cache is not None else None
        enc = encode_chunk(self.encoder, chunk, cache_get, self.job.batch_size, first=not self.encoded_any)
        self.encoded_any = self.encoded_any or enc.encoded > 0
        good = [j for j in range(len(items)) if j not in enc.failed]
        name = ""
        if good:
            rows, keys = [items[j] for j in good], [enc.keys[j] for j in good]
            name = write_staged(self.job.index_dir, out["part"][rows], out["ordinal"][rows],
                                [chunk[j] for j in good], enc.vectors[good], keys, [k in enc.fresh for k in keys])
        for j, i in enumerate(items):
            out["kind"][i], out["file"][i] = (OK, name) if j not in enc.failed else (REJECTED, "")
            out["reason"][i] = enc.failed.get(j, "")
        info = {"encode": enc.seconds, "calls": int(enc.encoded + len(enc.failed) > 0),
                "cache_hits": enc.cache_hits, "encoded": enc.encoded}
        return _append(out, _columns([{"part": -1, "ordinal": -1, "kind": STATS, "info": json.dumps(info)}]))


def _append(out: Dict[str, np.ndarray], more: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {name: np.concatenate([out[name], more[name]]) for name in ROW_COLUMNS}


# --- write: one task per partition, rows and shard numbers assigned by the driver -----------

def write_partition(index_dir: str, spec: dict, part: int, picks: Dict[str, List[int]], count: int,
                    first_row: int, numbers: List[int], shard_size: int, store_vectors: bool) -> dict:
    """Write partition `part`'s shards (unlisted until the driver commits them).

    Rerunning it (a retried task) rewrites the same shard names with the same rows."""
    t0 = time.perf_counter()
    manifest = Manifest.from_dict(spec)
    table = take_rows(index_dir, part, picks)
    if table.num_rows != count:
        raise RuntimeError(f"partition {part}: {table.num_rows} staged rows found, {count} expected")
    vectors = vectors_of(table)
    cols = table.select(["id", "modality", "text", "image", "metadata", "thumbnail"]).to_pydict()
    metadata = [json.loads(m) for m in cols["metadata"]]
    shards = []
    for k, number in enumerate(numbers):
        lo, hi = k * shard_size, min(count, (k + 1) * shard_size)
        meta = meta_table_of(cols["id"][lo:hi], cols["modality"][lo:hi], cols["text"][lo:hi],
                             cols["image"][lo:hi], metadata[lo:hi])
        info, _ = write_rows(index_dir, manifest, number, first_row + lo, meta, vectors[lo:hi], store_vectors)
        shards.append(info.to_dict())
    thumbnails = {i: t for i, t in zip(cols["id"], cols["thumbnail"]) if t}
    return {"shards": shards, "ids": cols["id"], "thumbnails": thumbnails, "seconds": time.perf_counter() - t0}


class CacheReader:
    """Serves embedding-cache lookups from the driver node's store, read-only (a Ray actor):
    LMDB must not be opened from other machines over a network filesystem."""

    def __init__(self, path: str):
        from ..store import Store

        self.store = Store(path, readonly=True)

    def get_many(self, keys: List[bytes]) -> Dict[bytes, np.ndarray]:
        return self.store.cache_get_many(keys)
