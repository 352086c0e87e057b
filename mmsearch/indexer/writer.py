"""The write stage: encoded rows -> committed shards, the manifest and the store.

A shard becomes visible only when the manifest that lists it has been
replaced atomically; the store (id -> row, tombstones of replaced rows) is
brought up to date right after, and `reconcile` repairs it if a crash fell
in between, so the manifest stays the single source of truth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from ..errors import InputError
from ..index_format import (FaissSpec, Manifest, ModelInfo, build_meta_table, new_shard_index, open_shard_meta,
                            read_manifest, shard_name, write_manifest, write_shard, write_trained_template)
from ..store import Store
from . import planner
from .prepare import Prepared

SYNCED_KEY = "synced_next_row"


@dataclass
class Pending:
    """Rows encoded but not yet in a committed shard."""

    items: List[Prepared] = field(default_factory=list)
    vectors: List[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def take(self, n: int):
        stacked = np.concatenate(self.vectors) if self.vectors else np.zeros((0, 0), np.float32)
        items, self.items = self.items[:n], self.items[n:]
        head, rest = stacked[:n], stacked[n:]
        self.vectors = [rest] if len(rest) else []
        return items, head


def _arrow_safe(values: list) -> list:
    """One Arrow type per column: mixed kinds (e.g. int and str) become text."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) <= 1 or kinds <= {int, float}:
        return values
    return [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]


def meta_table(items: List[Prepared]):
    keys = list(dict.fromkeys(k for p in items for k in p.metadata))
    columns = {k: _arrow_safe([p.metadata.get(k) for p in items]) for k in keys}
    metadata = [{k: columns[k][i] for k in keys} for i in range(len(items))]
    return build_meta_table([p.item.id for p in items], [p.modality for p in items],
                            [p.item.text for p in items], [p.image_ref for p in items], metadata)


class ShardWriter:
    def __init__(self, index_dir, store: Store, model: ModelInfo, instructions: dict, plan: planner.Plan, *,
                 shard_size: int, store_vectors: bool, train_size: int, recall_target: float,
                 extra: dict, manifest: Optional[Manifest] = None, on_commit: Optional[Callable] = None):
        self.index_dir = index_dir
        self.store = store
        self.model = model
        self.instructions = instructions
        self.plan = plan
        self.shard_size = shard_size
        self.store_vectors = store_vectors
        self.train_size = train_size
        self.recall_target = recall_target
        self.extra = extra
        self.manifest = manifest
        self.on_commit = on_commit
        self.pending = Pending()
        self.rows_written = 0
        self.tuning: dict = {}

    @property
    def ready(self) -> bool:
        return self.manifest is not None

    def add(self, items: List[Prepared], vectors: np.ndarray) -> None:
        if not items:
            return
        self.pending.items.extend(items)
        self.pending.vectors.append(np.asarray(vectors, dtype=np.float32))
        if not self.ready and len(self.pending) >= max(self.train_size, 1):
            self._start()
        while self.ready and len(self.pending) >= self.shard_size:
            self._commit(*self.pending.take(self.shard_size))

    def finish(self) -> Manifest:
        if not self.ready:
            self._start()
        while len(self.pending):
            self._commit(*self.pending.take(self.shard_size))
        return self.manifest

    def _start(self) -> None:
        """Train once (when the spec needs it) on the rows seen so far, then create the manifest."""
        spec = FaissSpec(self.plan.factory)
        if self.plan.needs_training:
            sample = np.concatenate(self.pending.vectors)[: self.train_size] if len(self.pending) else None
            if sample is None or len(sample) < self.plan.nlist:
                raise InputError(f"index {self.plan.factory!r} needs at least {self.plan.nlist} vectors to train, "
                                 f"the corpus gave {0 if sample is None else len(sample)}; pass --index Flat or a "
                                 f"smaller IVF")
            template = planner.train(self.plan, self.model.dim, sample)
            self.tuning = planner.tune(template, self.plan.factory, sample, self.recall_target)
            params = {k: v for k, v in self.tuning.items() if k in ("nprobe", "k_factor")}
            spec = write_trained_template(self.index_dir, template, self.plan.factory, params)
        self.manifest = Manifest.create(self.model, spec, self.instructions, extra=self.extra)
        write_manifest(self.index_dir, self.manifest)

    def _commit(self, items: List[Prepared], vectors: np.ndarray) -> None:
        start = self.manifest.next_row
        ids = np.arange(start, start + len(items), dtype=np.int64)
        index = new_shard_index(self.index_dir, self.manifest)
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        name = shard_name(_next_shard_number(self.manifest))
        info = write_shard(self.index_dir, name, index, ids, meta_table(items),
                           vectors if self.store_vectors else None)
        self.manifest = self.manifest.with_shard(info)
        write_manifest(self.index_dir, self.manifest)
        sync_store(self.store, [p.item.id for p in items], ids, self.manifest.next_row)
        self.rows_written += len(items)
        if self.on_commit:
            self.on_commit(info)


def _next_shard_number(manifest: Manifest) -> int:
    return max((int(s.name) for s in manifest.shards), default=-1) + 1


def sync_store(store: Store, item_ids: List[str], rows: np.ndarray, next_row: int) -> None:
    """Point ids at their new rows; an id that had an older row gets that row tombstoned."""
    old = store.rows_for(item_ids)
    replaced = [i for i, r, new in zip(item_ids, old, rows) if 0 <= r < new]
    if replaced:
        store.add_tombstones(replaced)
    store.put_ids(dict(zip(item_ids, (int(r) for r in rows))))
    store.set_meta(SYNCED_KEY, int(next_row))


def reconcile(index_dir, store: Store) -> Optional[Manifest]:
    """Bring the store up to the manifest after a crash between a commit and the store update."""
    try:
        manifest = read_manifest(index_dir)
    except Exception:
        return None
    synced = int(store.get_meta(SYNCED_KEY, 0) or 0)
    for shard in manifest.shards:
        if shard.id_end > synced:
            ids = open_shard_meta(index_dir, shard).column("id").to_pylist()
            sync_store(store, ids, np.arange(shard.id_start, shard.id_end, dtype=np.int64), shard.id_end)
    return manifest
