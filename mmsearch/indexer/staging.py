"""Staging files: what an encoder actor hands on for one batch of the Ray engine.

An actor writes one Arrow IPC file per batch into ``INDEX/.tmp-ray-staging/``
(under the temporary mark, so `remove_unlisted` sweeps it on the next run). A row
holds everything a shard and the store need about one encoded item, keyed by
(partition, ordinal): its id, meta columns, thumbnail, cache key and vector. The
driver reads keys and vectors for the embedding cache; a partition's write task
reads exactly the (partition, ordinal) rows the driver assigns to it, so a batch
written twice (a retried task) can never put an item in the index twice.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ..index_format import RAY_STAGING_DIR, staging_path
from .prepare import Prepared

STAGING_DIR = RAY_STAGING_DIR


def staging_dir(index_dir) -> Path:
    return staging_path(index_dir)


def write_staged(index_dir, parts: Sequence[int], ordinals: Sequence[int], items: Sequence[Prepared],
                 vectors: np.ndarray, keys: Sequence[bytes], fresh: Sequence[bool]) -> str:
    """Write one batch's encoded items; returns the file name (unique per call)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    table = pa.table({
        "part": pa.array(parts, pa.int64()), "ordinal": pa.array(ordinals, pa.int64()),
        "id": [p.item.id for p in items], "modality": [p.modality for p in items],
        "text": pa.array([p.item.text for p in items], pa.string()),
        "image": pa.array([p.image_ref for p in items], pa.string()),
        "metadata": [json.dumps(dict(p.metadata), ensure_ascii=False) for p in items],
        "thumbnail": pa.array([p.thumbnail for p in items], pa.binary()),
        "cache_key": pa.array(list(keys), pa.binary()), "fresh": pa.array(list(fresh), pa.bool_()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    })
    folder = staging_dir(index_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{secrets.token_hex(8)}.arrow"
    partial = folder / f"{name}.partial"
    with pa.OSFile(str(partial), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.rename(partial, folder / name)  # readers never see a half-written batch
    return name


def read_staged(index_dir, name: str, columns: Optional[Iterable[str]] = None) -> pa.Table:
    """A staged batch, memory-mapped: only the columns used are read from disk."""
    table = ipc.open_file(pa.memory_map(str(staging_dir(index_dir) / name), "r")).read_all()
    return table.select(list(columns)) if columns is not None else table


def vectors_of(table: pa.Table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def fresh_cache_entries(index_dir, name: str) -> Dict[bytes, np.ndarray]:
    """The cache entries a batch computed with the model (not those it took from the cache)."""
    table = read_staged(index_dir, name, ["cache_key", "fresh", "vector"])
    table = table.filter(table.column("fresh"))
    return dict(zip(table.column("cache_key").to_pylist(), vectors_of(table)))


def take_rows(index_dir, part: int, picks: Dict[str, List[int]]) -> pa.Table:
    """The staged rows of partition `part`: from each file the listed ordinals, sorted by ordinal."""
    tables = []
    for name, ordinals in picks.items():
        table = read_staged(index_dir, name)
        mask = pc.and_(pc.equal(table.column("part"), part),
                       pc.is_in(table.column("ordinal"), value_set=pa.array(ordinals, pa.int64())))
        tables.append(table.filter(mask))
    table = pa.concat_tables(tables).sort_by("ordinal")
    ordinals = table.column("ordinal").to_pylist()
    if len(set(ordinals)) != len(ordinals):  # a file listed twice would be a driver bug
        raise RuntimeError(f"partition {part}: staged ordinals repeat")
    return table


def remove_staged(index_dir, names: Iterable[str]) -> None:
    for name in names:
        try:
            os.unlink(staging_dir(index_dir) / name)
        except FileNotFoundError:
            pass
