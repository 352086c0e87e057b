"""`build_index` and `add_to_index`: one indexing run from sources into an index directory.

Rerunning the same build continues where it stopped: committed shards are
kept (torn ones discarded), ids already indexed are skipped, and vectors
computed before a crash come back from the embedding cache.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..errors import InputError, MMSearchError
from ..index_format import (FORMAT_FILES, atomic_write_json, check_model, errors_path, model_info_of, read_manifest,
                            remove_unlisted, require_index, stats_path, store_path, wipe_index, writer_lock)
from ..store import Store
from . import planner
from .estimate import estimate_rows
from .loading import load_build_encoder
from .pipeline import Pipeline
from .query_bank import load_bank_queries, store_query_bank
from .settings import BuildSettings
from .stats import RunStats
from .writer import ShardWriter, reconcile

__all__ = ["FORMAT_FILES", "BuildResult", "TooManyRejections", "add_to_index", "build_index"]


class TooManyRejections(MMSearchError):
    """The run finished, but more items were rejected than --max-errors allows."""

    def __init__(self, result: "BuildResult", limit: float):
        self.result = result
        super().__init__(f"{result.rejected} of {result.read} items were rejected, more than the limit "
                         f"({limit:g}); see {errors_path(result.path)}")


@dataclass(frozen=True)
class BuildResult:
    path: str
    read: int
    indexed: int
    rejected: int
    skipped: int
    updated: int
    rows: int
    shards: int
    seconds: float
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _index_dir(out) -> Path:
    text = os.fspath(out)
    if "://" in text:
        raise InputError(f"index directory {text!r} is a URL; an index is written to a local or shared-filesystem "
                         f"path (mount object storage with s3fs, gcsfuse or similar to use it)")
    return Path(text)


def _paths(sources) -> List[str]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths = [os.fspath(s) for s in sources]
    if not paths:
        raise InputError("no sources given")
    return paths


def build_index(sources, out, model: Optional[str] = None, *, encoder=None, fresh: bool = False,
                engine: str = "local", ray_address: Optional[str] = None, **options) -> BuildResult:
    """Index `sources` (paths: folders, JSONL/CSV/Parquet, M-BEIR pools, PDFs, .tar) into `out`.

    `options` are `BuildSettings` fields (index, shard_size, batch_size, workers, task,
    instruction, memory_budget, max_errors, ...). Rerunning resumes; `fresh=True` starts over.
    `engine="ray"` runs the same stages on Ray Data (`ray_address`: "auto" or "HOST:PORT"
    joins a cluster; None connects as `ray.init()` does, starting a local Ray if there is
    none; see docs/ray.md).
    """
    settings = BuildSettings(model=model, engine=engine, ray_address=ray_address, **options)
    out = _index_dir(out)
    bank_queries = _bank_queries(settings)
    with writer_lock(out):
        if fresh:
            wipe_index(out)
        return _run(_paths(sources), out, settings, encoder, bank_queries)


def add_to_index(index_dir, sources, *, encoder=None, on_duplicate: str = "reject", engine: str = "local",
                 ray_address: Optional[str] = None, **options) -> BuildResult:
    """Add items to an existing index with its own model and candidate instruction.
    An id already present is rejected (`on_duplicate="reject"`) or replaced ("update")."""
    if on_duplicate not in ("reject", "update"):
        raise InputError(f"on_duplicate={on_duplicate!r}; valid: reject, update")
    settings = BuildSettings(existing=on_duplicate, engine=engine, ray_address=ray_address, **options)
    out = require_index(_index_dir(index_dir))
    bank_queries = _bank_queries(settings)
    with writer_lock(out):
        return _run(_paths(sources), out, settings, encoder, bank_queries)


def _instructions(settings: BuildSettings, manifest, encoder) -> dict:
    chosen = settings.task is not None or settings.instruction is not None
    wanted = settings.instructions(encoder)
    if manifest is None:
        return wanted
    built = dict(manifest.instructions)
    if chosen and wanted != built:
        raise InputError(f"the index was built with candidate instructions {built}, this run asks for {wanted}; "
                         f"use the same --task/--instruction (or --fresh to rebuild)")
    return built


def _session(settings: BuildSettings):
    """The Ray connection of a Ray run (None for the local engine)."""
    if settings.engine != "ray":
        return nullcontext(None)
    from .ray_engine import ray_session

    return ray_session(settings.ray_address)


def _plan(settings: BuildSettings, manifest, paths, dim: int) -> planner.Plan:
    if manifest is not None:
        if settings.index not in ("auto", manifest.faiss.factory):
            raise InputError(f"the index uses faiss {manifest.faiss.factory!r}; --index {settings.index!r} "
                             f"needs --fresh")
        return planner.Plan(manifest.faiss.factory)
    n = estimate_rows(paths, settings.source_kind) if settings.index == "auto" else 0
    return planner.plan(settings.index, dim, n, settings.memory_budget)


def _run(paths: List[str], out: Path, settings: BuildSettings, encoder, bank_queries) -> BuildResult:
    from tqdm.auto import tqdm

    with _session(settings) as cluster, Store(store_path(out)) as store:
        manifest = reconcile(out, store)
        remove_unlisted(out)
        encoder = encoder or load_build_encoder(settings, manifest, cluster)
        info = model_info_of(encoder)
        if manifest is not None:
            check_model(manifest.model, info)
        instructions = _instructions(settings, manifest, encoder)
        plan = _plan(settings, manifest, paths, encoder.dim)
        extra = {"sources": paths} if manifest is None else dict(manifest.extra)
        writer = ShardWriter(out, store, info, instructions, plan, shard_size=settings.shard_size,
                             store_vectors=settings.store_vectors,
                             train_size=planner.train_size(plan, settings.train_size),
                             recall_target=settings.recall_target, extra=extra, manifest=manifest)
        stats = RunStats()
        total = estimate_rows(paths, settings.source_kind)
        bar = tqdm(total=total, unit="item", desc="index", disable=not settings.show_progress, dynamic_ncols=True)
        with open(errors_path(out), "w", encoding="utf-8") as errors:
            runner = _runner(cluster, paths, out, settings, encoder, store, writer, instructions, stats, errors, bar)
            try:
                runner.run()
            finally:
                bar.close()
                stats.stop()
                _write_stats(out, stats, settings, writer, plan, runner.describe())
        if bank_queries is not None:
            _write_bank(out, bank_queries, settings, encoder)
        return _result(out, stats, writer, settings)


def _bank_queries(settings: BuildSettings):
    """The query bank's inputs, read before anything is written: a bad file fails fast."""
    return None if settings.query_bank is None else load_bank_queries(settings.query_bank)


def _write_bank(out: Path, bank_queries, settings: BuildSettings, encoder) -> None:
    store_query_bank(out, read_manifest(out), bank_queries, task=settings.task, instruction=None, encoder=encoder,
                     batch_size=settings.batch_size, show_progress=settings.show_progress)


def _runner(cluster, paths, out, settings, encoder, store, writer, instructions, stats, errors, bar):
    if cluster is not None:
        from .ray_engine import RayEngine

        return RayEngine(cluster, paths, out, settings, encoder, store, writer, instructions, stats, errors, bar)
    return Pipeline(paths, settings, encoder, store, writer, instructions,
                    exists=lambda i: store.get_row(i) is not None, stats=stats, errors=errors, progress=bar)


def _write_stats(out: Path, stats: RunStats, settings: BuildSettings, writer: ShardWriter, plan,
                 engine: dict) -> None:
    extra = {"batch_size": settings.batch_size, "index": plan.factory, "tuning": writer.tuning,
             "shard_size": settings.shard_size, **engine}
    atomic_write_json(stats_path(out), stats.to_dict(engine["workers"], extra, encoders=engine["encoders"]))


def _result(out: Path, stats: RunStats, writer: ShardWriter, settings: BuildSettings) -> BuildResult:
    m = writer.manifest
    result = BuildResult(path=str(out), read=stats.read, indexed=stats.indexed, rejected=stats.rejected,
                         skipped=stats.skipped, updated=stats.updated, rows=m.total_rows if m else 0,
                         shards=len(m.shards) if m else 0, seconds=round(stats.wall, 3),
                         stats=json.loads(stats_path(out).read_text()))
    limit = settings.error_limit(stats.read)
    if limit is not None and stats.rejected > limit:
        raise TooManyRejections(result, limit)
    return result
