"""A graph index's shards grow instead of multiplying.

Two HNSW graphs cannot be joined without building one of them again, so every shard of a
graph index costs a whole graph walk per query: at equal recall 4 shards searched one after
another gave 0.31-0.46x the QPS of one (benchmarks/shards.py). IVF shards are joined at
open instead (`index_format.joined`). A graph index keeps one graph: each commit adds the
new rows to the last shard's graph (faiss's HNSW inserts incrementally, which costs what
building a graph of the new rows would) and writes the grown shard under a new name; the
writer then lists it in place of the last one in one manifest replace, as compaction does.
The rows stay contiguous, so no row is renumbered and the store keeps its rows.

The price is rewriting the grown shard's files at every commit. A shard stops growing when
the graph and a float32 copy of its vectors no longer fit in half of the memory available
(`planner.graph_grows`), when the manifest's index is not a plain-vector graph (compact
codes, IVF), or when the rows cannot be concatenated (metadata columns of clashing types,
vectors or tokens stored in one part only); then the next rows start a new shard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import faiss
import numpy as np
import pyarrow as pa

from ..index_format import (Manifest, ShardInfo, TokenMatrix, load_shard_tokens, load_shard_vectors,
                            open_shard_index, open_shard_meta, vectors_of_stored, write_shard)
from . import planner


def is_graph(index: Any) -> bool:
    """Whether a shard's faiss index is an id map over an HNSW graph of plain vectors."""
    return isinstance(index, faiss.IndexIDMap) and isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW)


def growable(manifest: Manifest, rows: int, dim: int, store_vectors: bool, has_tokens: bool) -> bool:
    """Whether `rows` new rows may be added to the last shard of `manifest` (cheap checks
    first; `grow` still declines when the shard's index is no graph or its metadata clashes)."""
    last = manifest.shards[-1] if manifest.shards else None
    # the factory first: Flat and IVF commits must not read the last shard back to find out
    return (last is not None and manifest.faiss.factory.startswith("HNSW") and manifest.compact is None
            and last.id_end == manifest.next_row
            and last.has_vectors == store_vectors and last.has_tokens == has_tokens
            and planner.graph_grows(last.rows + rows, dim))


def grow(index_dir: Path, manifest: Manifest, name: str, graph: Optional[Tuple[str, faiss.Index]], meta: pa.Table,
         vectors: np.ndarray, tokens: Optional[TokenMatrix]) -> Optional[Tuple[ShardInfo, faiss.Index]]:
    """Write shard `name`: the last shard of `manifest` with `vectors` (rows from
    `manifest.next_row` on, with `meta` and `tokens`) added to its graph. `graph` is the
    writer's (shard name, index) of the last shard still in memory, reused when it is that
    shard (it is filled in place). Not listed yet; returns (its ShardInfo, its index), or
    None when the rows cannot join that shard (see the module doc)."""
    last = manifest.shards[-1]
    index = graph[1] if graph is not None and graph[0] == last.name else open_shard_index(index_dir, last, mmap=False)
    if not is_graph(index):
        return None
    try:
        meta = pa.concat_tables([open_shard_meta(index_dir, last), meta], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None  # a metadata column of one type before and another now: keep them in shards apart
    stored = None
    if last.has_vectors:
        stored = np.concatenate([vectors_of_stored(np.asarray(load_shard_vectors(index_dir, last)), None),
                                 np.asarray(vectors, np.float32)])
    if tokens is not None:
        tokens = TokenMatrix.concat([load_shard_tokens(index_dir, last), tokens])
    new = np.arange(manifest.next_row, manifest.next_row + len(vectors), dtype=np.int64)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), new)
    ids = np.arange(last.id_start, new[-1] + 1, dtype=np.int64)
    return write_shard(index_dir, name, index, ids, meta, stored, tokens=tokens), index

