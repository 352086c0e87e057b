"""The write stage: encoded rows -> committed shards, the manifest and the store.

A shard becomes visible only when the manifest that lists it has been
replaced atomically; the store (id -> row, tombstones of replaced rows) is
brought up to date right after, and `reconcile` repairs it if a crash fell
in between, so the manifest stays the single source of truth.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..index_format import (FaissSpec, faiss_factory, factory_lists, Manifest, ModelInfo, MultiVectorSpec, ShardInfo,
                            TokenMatrix, build_meta_table, join_budget, join_ivf, joinable, load_shard_vectors,
                            new_shard_index, open_shard_index, open_shard_meta, positions_label_rows, read_manifest,
                            read_trained_template, shard_dir, shard_name, train_binary_lists, utc_now,
                            write_manifest, write_shard, write_trained_template)
from ..store import Store
from . import compact_plan, graph_growth, planner
from .prepare import Prepared

RETUNE_GROWTH = 1.5  # re-tune when a shard holds this many times the vectors the defaults were tuned on

SYNCED_KEY = "synced_next_row"


@dataclass
class Pending:
    """Rows encoded but not yet in a committed shard."""

    items: List[Prepared] = field(default_factory=list)
    vectors: List[np.ndarray] = field(default_factory=list)
    tokens: List[np.ndarray] = field(default_factory=list)  # a multi-vector model's, one per item

    def __len__(self) -> int:
        return len(self.items)

    def take(self, n: int):
        stacked = np.concatenate(self.vectors) if self.vectors else np.zeros((0, 0), np.float32)
        items, self.items = self.items[:n], self.items[n:]
        tokens, self.tokens = self.tokens[:n], self.tokens[n:]
        head, rest = stacked[:n], stacked[n:]
        self.vectors = [rest] if len(rest) else []
        return items, head, tokens


def _arrow_safe(values: list) -> list:
    """One Arrow type per column: mixed kinds (e.g. int and str) become text."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) <= 1 or kinds <= {int, float}:
        return values
    return [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]


def meta_table_of(ids: List[str], modalities: List[str], texts: List[Optional[str]],
                  images: List[Optional[str]], metadata: List[Mapping[str, Any]]):
    """The meta.arrow table of a shard's rows, in the shard layout."""
    keys = list(dict.fromkeys(k for m in metadata for k in m))
    columns = {k: _arrow_safe([m.get(k) for m in metadata]) for k in keys}
    rows = [{k: columns[k][i] for k in keys} for i in range(len(ids))]
    return build_meta_table(ids, modalities, texts, images, rows)


def warm_up_arrow() -> None:
    """pyarrow imports pandas (when installed, ~0.7 s) on its first `pa.array` of a list;
    pay that while the model is busy rather than in the final, serial shard write."""
    meta_table_of(["warm-up"], ["text"], ["warm-up"], [None], [{}])


def meta_table(items: List[Prepared], tokens: Optional[List[np.ndarray]] = None):
    """The rows' meta.arrow table; a multi-vector index also records each row's token count
    (`n_tokens`)."""
    metadata = [p.metadata for p in items]
    if tokens:
        metadata = [{**m, "n_tokens": len(t)} for m, t in zip(metadata, tokens)]
    return meta_table_of([p.item.id for p in items], [p.modality for p in items], [p.item.text for p in items],
                         [p.image_ref for p in items], metadata)


def write_rows(index_dir, manifest: Manifest, number: int, first_row: int, meta, vectors: np.ndarray,
               store_vectors: bool, tokens: Optional[List[np.ndarray]] = None) -> Tuple[ShardInfo, Any]:
    """Write shard `number` holding global rows [first_row, first_row + len(vectors)), and a
    multi-vector index's token matrices (one per row, packed at the manifest's precision).
    Not visible until a manifest lists it (`ShardWriter.commit`). Returns its ShardInfo
    and the filled faiss index (still in memory, for tuning)."""
    ids = np.arange(first_row, first_row + len(vectors), dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_shard_index(index_dir, manifest)
    index.add_with_ids(vectors, ids)
    packed = pack_tokens(manifest, tokens, len(vectors))
    return write_shard(index_dir, shard_name(number), index, ids, meta, vectors if store_vectors else None,
                       tokens=packed), index


def pack_tokens(manifest: Manifest, tokens: Optional[List[np.ndarray]], rows: int) -> Optional[TokenMatrix]:
    """A multi-vector index's token matrices of `rows` rows, packed at the manifest's precision."""
    if manifest.multi_vector is None:
        return None
    if tokens is None or len(tokens) != rows:
        raise InputError(f"a multi-vector index needs one token matrix per row, got "
                         f"{0 if tokens is None else len(tokens)} for {rows} rows")
    return TokenMatrix.pack(tokens, manifest.multi_vector.precision)


def start_manifest(index_dir, model: ModelInfo, instructions: dict, plan: planner.Plan,
                   sample: Optional[np.ndarray], recall_target: float, extra: dict,
                   job: Optional[dict] = None, multi_vector: Optional[MultiVectorSpec] = None):
    """Train once (when the spec needs it) on `sample`, then create and commit the
    manifest; returns (manifest, tuning)."""
    spec, tuning, compact = FaissSpec(plan.factory), {}, None
    if plan.compact:  # compact codes (compact_plan): int8 calibrated / auto's choice measured on `sample`
        compact = compact_plan.settle(plan.compact, sample, recall_target, metric="inner_product")
        spec = FaissSpec(plan.factory if len(plan.compact) == 1 else faiss_factory(compact.precision, "Flat"))
        if factory_lists(spec.factory):  # a binary IVF: its lists trained once, every shard a copy
            template = train_binary_lists(compact, spec.factory, sample)
            params, measured = compact_plan.tune_lists(compact, spec.factory, template, sample, recall_target)
            spec = write_trained_template(index_dir, template, spec.factory, params)
            spec = dataclasses.replace(spec, calibration=measured)
    elif plan.needs_training:
        if sample is None or len(sample) < plan.nlist:
            raise InputError(f"index {plan.factory!r} needs at least {plan.nlist} vectors to train, "
                             f"the corpus gave {0 if sample is None else len(sample)}; pass --index Flat or a "
                             f"smaller IVF")
        choice = planner.choose(plan, model.dim, sample, recall_target)
        tuning = choice.tuning
        spec = write_trained_template(index_dir, choice.template, choice.factory, planner.search_defaults(tuning))
        spec = dataclasses.replace(spec, calibration=choice.calibration)
    manifest = Manifest.create(model, spec, instructions, extra=extra, job=job, multi_vector=multi_vector,
                               compact=compact)
    write_manifest(index_dir, manifest)
    return manifest, tuning


class ShardWriter:
    def __init__(self, index_dir, store: Store, model: ModelInfo, instructions: dict, plan: planner.Plan, *,
                 shard_size: int, store_vectors: bool, train_size: int, recall_target: float,
                 extra: dict, manifest: Optional[Manifest] = None, on_commit: Optional[Callable] = None,
                 job: Optional[dict] = None, multi_vector: Optional[MultiVectorSpec] = None):
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
        self.job = job  # recorded in the manifest this writer creates (see index_format.job)
        self.multi_vector = multi_vector  # likewise: a multi-vector index's layout
        self.manifest = manifest
        self.on_commit = on_commit
        self.pending = Pending()
        self.rows_written = 0
        self.tuning: dict = {}
        self.tuned_rows = 0
        self.graph: Optional[Tuple[str, Any]] = None  # (name, faiss index) of the last graph shard written
        if manifest is not None and manifest.faiss.calibration.get("rows"):  # index add, a resumed build
            self.tuning = dict(manifest.faiss.search_params or {})  # re-tuned as these rows grow the index
            self.tuned_rows = int(manifest.faiss.calibration["rows"])

    @property
    def ready(self) -> bool:
        return self.manifest is not None

    def add(self, items: List[Prepared], vectors: np.ndarray, tokens: Optional[List[np.ndarray]] = None) -> None:
        if not items:
            return
        self.pending.items.extend(items)
        self.pending.vectors.append(np.asarray(vectors, dtype=np.float32))
        self.pending.tokens.extend(tokens or ())
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
        sample = np.concatenate(self.pending.vectors)[: self.train_size] if len(self.pending) else None
        self.start(sample)

    def start(self, sample: Optional[np.ndarray]) -> None:
        """Create the manifest, training the index on `sample` first when the spec needs it."""
        self.manifest, self.tuning = start_manifest(self.index_dir, self.model, self.instructions, self.plan,
                                                    sample, self.recall_target, self.extra, job=self.job,
                                                    multi_vector=self.multi_vector)
        self.tuned_rows = 0 if sample is None else len(sample)

    def _commit(self, items: List[Prepared], vectors: np.ndarray, tokens: List[np.ndarray]) -> None:
        graph, self.graph = self.graph, None  # filled in place below: kept only once committed
        meta, number = meta_table(items, tokens), next_shard_number(self.manifest)
        if graph_growth.growable(self.manifest, len(vectors), vectors.shape[1], self.store_vectors, bool(tokens)):
            packed = pack_tokens(self.manifest, tokens or None, len(vectors))
            grown = graph_growth.grow(self.index_dir, self.manifest, shard_name(number), graph, meta, vectors, packed)
            if grown is not None:
                self._commit_grown(grown[0], [p.item.id for p in items])
                self.graph = (grown[0].name, grown[1])
                return
        info, index = write_rows(self.index_dir, self.manifest, number, self.manifest.next_row, meta, vectors,
                                 self.store_vectors, tokens=tokens or None)
        self._retune(index, vectors)
        self.commit([info], [p.item.id for p in items])
        self.graph = (info.name, index) if graph_growth.is_graph(index) else None

    def _commit_grown(self, info: ShardInfo, item_ids: List[str]) -> None:
        """List the grown shard `info` in place of the last shard (one atomic manifest
        replace), point the new ids at their rows, then remove the shard it replaces."""
        replaced = self.manifest.shards[-1]
        self.manifest = dataclasses.replace(self.manifest, shards=self.manifest.shards[:-1] + (info,),
                                            updated=utc_now(), next_row=max(self.manifest.next_row, info.id_end))
        write_manifest(self.index_dir, self.manifest)
        sync_store(self.store, item_ids, np.arange(replaced.id_end, info.id_end, dtype=np.int64),
                   self.manifest.next_row)
        shutil.rmtree(shard_dir(self.index_dir, replaced), ignore_errors=True)
        self.rows_written += len(item_ids)
        if self.on_commit:
            self.on_commit(info)

    def _retune(self, index, vectors: np.ndarray) -> None:
        """Re-tune the search defaults when the index a search runs on has grown much bigger
        than the rows they were tuned on: a denser index needs more nprobe / refine candidates
        for the same recall. IVF shards are searched joined (`index_format.joined`), so that
        index is all the shards so far with this one; the new defaults are committed with
        this shard's manifest."""
        rows = self.manifest.total_rows + len(vectors)
        if not self.tuning or rows < RETUNE_GROWTH * max(self.tuned_rows, 1):
            return
        searched, x, id_offset = self._searched(index, vectors)
        tuning = planner.tune_filled(searched, x, self.recall_target, id_offset=id_offset)
        if not tuning:
            return
        self.tuning, self.tuned_rows = tuning, len(x)
        calibration = {**self.manifest.faiss.calibration, "recall_at_10": tuning["recall_at_10"],
                       "rows": len(x), "held_out": "rows of the index hidden from search"}
        spec = dataclasses.replace(self.manifest.faiss, search_params=planner.search_defaults(tuning),
                                   calibration=calibration)
        self.manifest = dataclasses.replace(self.manifest, faiss=spec)

    def _searched(self, index, vectors: np.ndarray):
        """(the index searches will run on, its vectors, the global row of its label 0): the
        earlier shards joined with this one when they can be (and their vectors fit in memory
        twice, for the joined copy and the exact neighbours), else this shard alone."""
        shards, m = self.manifest.shards, self.manifest
        alone = (index, vectors, m.next_row)
        need = (m.total_rows + len(vectors)) * vectors.shape[1] * 4 * 2
        if not shards or m.faiss.trained_path is None or not all(s.has_vectors for s in shards) \
                or need > join_budget() or not joinable(_without_id_map(index)):
            return alone
        starts = [s.id_start for s in shards] + [m.next_row]
        if any(s.id_start + s.rows != after for s, after in zip(shards, starts[1:])):
            return alone  # rows not contiguous: positions in the join would not be rows
        opened = [open_shard_index(self.index_dir, s) for s in shards]  # kept: the parts below are views
        parts = [_without_id_map(i) for i in opened] + [_without_id_map(index)]
        refine = positions_label_rows(parts[-1])
        joined = join_ivf(read_trained_template(self.index_dir, m.faiss), parts,
                          [st - starts[0] if refine else 0 for st in starts])
        if joined is None:
            return alone
        x = np.concatenate([np.asarray(load_shard_vectors(self.index_dir, s), np.float32) for s in shards]
                           + [np.asarray(vectors, np.float32)])
        del opened
        return joined, x, 0 if refine else starts[0]

    def commit(self, infos: List[ShardInfo], item_ids: List[str]) -> None:
        """List written shards in the manifest (one atomic replace), then point their ids
        at their rows in the store. `item_ids` are the shards' ids, in row order."""
        for info in infos:
            self.manifest = self.manifest.with_shard(info)
        write_manifest(self.index_dir, self.manifest)
        rows = np.concatenate([np.arange(i.id_start, i.id_end, dtype=np.int64) for i in infos])
        sync_store(self.store, item_ids, rows, self.manifest.next_row)
        self.rows_written += len(item_ids)
        if self.on_commit:
            for info in infos:
                self.on_commit(info)


def next_shard_number(manifest: Manifest) -> int:
    return max((int(s.name) for s in manifest.shards), default=-1) + 1


def sync_store(store: Store, item_ids: List[str], rows: np.ndarray, next_row: int) -> None:
    """Point ids at their new rows; an id that had an older row gets that row tombstoned."""
    old = store.rows_for(item_ids)
    replaced = [i for i, r, new in zip(item_ids, old, rows) if 0 <= r < new]
    if replaced:
        store.add_tombstones(replaced)
    store.put_ids(dict(zip(item_ids, (int(r) for r in rows))))
    store.clear_removed(item_ids)  # an id compacted away and added again is live again
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


def _without_id_map(index):
    """The index inside an id map (a refine stage's shard), else the index itself."""
    import faiss

    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)

