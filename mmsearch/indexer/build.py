"""`build_index` and `add_to_index`: one indexing run from sources into an index directory.

Rerunning the same build continues where it stopped: committed shards are
kept (torn ones discarded), ids already indexed are skipped, and vectors
computed before a crash come back from the embedding cache.

"The same build" is the job recorded in the manifest (`index_format.job`): the
sources with their fingerprints and the settings that shape the index. A build of
another job into a folder holding an index is refused (`OtherJobError`) before
anything in the folder is touched; `overwrite=True` wipes the index first, and
`add_to_index` appends to it. Ids deleted and compacted away stay away when the
same job is rerun; only `add_to_index` brings one back.
"""
from __future__ import annotations

import dataclasses
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..errors import IndexFormatError, IndexMismatchError, InputError, MMSearchError
from ..index_format import (FORMAT_FILES, atomic_write_json, check_model, errors_path, fingerprint_source, is_index,
                            job_differences, job_record, legacy_differences, lexical_extra, model_info_of, read_manifest,
                            remove_unlisted, require_index, stats_path, store_path, utc_now, wipe_index,
                            write_manifest, writer_lock)
from ..store import Store
from . import compact_plan, planner
from .estimate import estimate_rows
from .loading import load_build_encoder, multi_vector_setup
from .pipeline import Pipeline
from .query_bank import load_bank_queries, store_query_bank
from .settings import BuildSettings
from .stats import RunStats
from .writer import ShardWriter, reconcile

__all__ = ["FORMAT_FILES", "BuildResult", "OtherJobError", "TooManyRejections", "add_to_index", "build_index"]


class OtherJobError(IndexMismatchError):
    """`build_index` into a folder that holds an index another job (other sources or
    settings) made. Nothing was changed; `differences` lists what differs."""

    def __init__(self, out, differences: List[str]):
        self.path = str(out)
        self.differences = list(differences)
        super().__init__(f"{out} holds an index built by another job ({'; '.join(self.differences)}); "
                         f"to replace it, build again with --overwrite; to add to it, "
                         f"run `mmsearch index add {out} SOURCES`")


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


def build_index(sources, out, model: Optional[str] = None, *, encoder=None, overwrite: bool = False,
                fresh: bool = False, engine: str = "local", ray_address: Optional[str] = None,
                **options) -> BuildResult:
    """Index `sources` (paths: folders, JSONL/CSV/Parquet, M-BEIR pools, PDFs, .tar) into `out`.

    `options` are `BuildSettings` fields (index, shard_size, batch_size, workers, task,
    instruction, memory_budget, max_errors, ...). Rerunning the same job (same sources,
    same settings) resumes it. When `out` holds an index of another job, OtherJobError
    is raised and nothing is changed; `overwrite=True` wipes that index, then builds
    (`fresh=True` is the older name of `overwrite`, kept as an alias).
    `engine="ray"` runs the same stages on Ray Data (`ray_address`: "auto" or "HOST:PORT"
    joins a cluster; None connects as `ray.init()` does, starting a local Ray if there is
    none; see docs/ray.md).
    """
    settings = BuildSettings(model=model, engine=engine, ray_address=ray_address, **options)
    out = _index_dir(out)
    paths = _paths(sources)
    bank_queries = _bank_queries(settings)
    job = {**job_record(paths, settings.job_settings(), exclude=out), "requested": settings.requested()}
    overwrite = overwrite or fresh
    if not overwrite:
        _check_job(out, job, paths)  # before the lock file: a refused build leaves the folder as it was
    with writer_lock(out):
        if overwrite:
            wipe_index(out)
        else:
            _check_job(out, job, paths)  # again, holding the lock: another process may have built meanwhile
        return _run(paths, out, settings, encoder, bank_queries, job=job)


def _existing_manifest(out: Path):
    """The committed manifest in `out`, or None when there is none."""
    return read_manifest(out) if is_index(out) else None


def _check_job(out: Path, job: dict, paths: List[str]) -> None:
    """OtherJobError unless `out` holds no index or an index of this same job. An index
    from before job records is this job when the sources its manifest lists are these."""
    try:
        manifest = _existing_manifest(out)
    except IndexFormatError as e:
        raise OtherJobError(out, [f"its manifest cannot be read: {e}"]) from None
    if manifest is None:
        return
    if manifest.job:
        diffs = job_differences(manifest.job, job)
    else:
        diffs = legacy_differences(manifest.extra.get("sources"), paths)
    if diffs:
        raise OtherJobError(out, diffs)


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
        return _run(_paths(sources), out, settings, encoder, bank_queries, job=None)


def _instructions(settings: BuildSettings, manifest, encoder) -> dict:
    chosen = settings.task is not None or settings.instruction is not None
    wanted = settings.instructions(encoder)
    if manifest is None:
        return wanted
    built = dict(manifest.instructions)
    if chosen and wanted != built:
        raise InputError(f"the index was built with candidate instructions {built}, this run asks for {wanted}; "
                         f"use the same --task/--instruction (or --overwrite to rebuild)")
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
                             f"needs --overwrite (a rebuild)")
        return planner.Plan(manifest.faiss.factory)
    n = estimate_rows(paths, settings.source_kind) if settings.index == "auto" else 0
    return planner.plan(settings.index, dim, n, settings.memory_budget, settings.shard_size)


def _check_model(out: Path, built, info, job: Optional[dict]) -> None:
    """check_model; for a build (`job` given) another model means another job."""
    try:
        check_model(built, info)
    except IndexMismatchError as e:
        if job is None:
            raise
        details = str(e).split(": ", 1)[-1]  # check_model's "the index was built with ...: <details>"
        raise OtherJobError(out, [f"model: the index has {built.id!r}, this run {info.id!r} ({details})"]) from None


def _run(paths: List[str], out: Path, settings: BuildSettings, encoder, bank_queries,
         job: Optional[dict]) -> BuildResult:
    """One run; `job` is the build's job record (None for `add_to_index`). Every check
    that can refuse the run comes before the store is opened or a file is written."""
    with _session(settings) as cluster:
        known = _existing_manifest(out)
        encoder, multi_vector = multi_vector_setup(settings, known, encoder or load_build_encoder(
            compact_plan.encoder_settings(settings), known, cluster))
        info = model_info_of(encoder)
        if known is not None:
            _check_model(out, known.model, info, job)
        instructions = _instructions(settings, known, encoder)
        plan = compact_plan.apply(lambda: _plan(settings, known, paths, encoder.dim), settings, encoder, known,
                                  lambda: estimate_rows(paths, settings.source_kind))
        with Store(store_path(out)) as store:
            return _write(paths, out, settings, _Checked(encoder, info, instructions, plan, job, multi_vector),
                          bank_queries, store, cluster)


@dataclass(frozen=True)
class _Checked:
    """What `_run` settled before writing: the encoder and what the index will record."""

    encoder: object
    info: object
    instructions: dict
    plan: object
    job: Optional[dict]
    multi_vector: object = None  # the MultiVectorSpec of a multi-vector model's index


def _write(paths: List[str], out: Path, settings: BuildSettings, c: _Checked, bank_queries, store,
           cluster) -> BuildResult:
    from tqdm.auto import tqdm

    encoder, instructions, plan = c.encoder, c.instructions, c.plan
    manifest = reconcile(out, store)
    remove_unlisted(out)
    if manifest is not None and c.job is not None and not manifest.job:
        manifest = dataclasses.replace(manifest, job=c.job)  # an index from before job records: record it
        write_manifest(out, manifest)
    elif manifest is not None and c.job is None and manifest.job:
        # `index add`: listed under the job's "added" (written with the first shard it commits)
        added = [*manifest.job.get("added", ()),
                 {"sources": [fingerprint_source(p, exclude=out) for p in paths], "at": utc_now()}]
        manifest = dataclasses.replace(manifest, job={**manifest.job, "added": added})
    extra = {"sources": paths, **lexical_extra(settings.text_fields)} if manifest is None else dict(manifest.extra)
    writer = ShardWriter(out, store, c.info, instructions, plan, shard_size=settings.shard_size,
                         store_vectors=settings.store_vectors,
                         train_size=planner.train_size(plan, settings.train_size),
                         recall_target=settings.recall_target, extra=extra, manifest=manifest, job=c.job,
                         multi_vector=c.multi_vector)
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
    if settings.existing == "skip":  # a build: ids compacted away are not brought back (`index add` can)
        def exists(i):
            return store.get_row(i) is not None or store.is_removed(i)
    else:
        def exists(i):
            return store.get_row(i) is not None
    return Pipeline(paths, settings, encoder, store, writer, instructions,
                    exists=exists, stats=stats, errors=errors, progress=bar)


def _write_stats(out: Path, stats: RunStats, settings: BuildSettings, writer: ShardWriter, plan,
                 engine: dict) -> None:
    factory = writer.manifest.faiss.factory if writer.manifest else plan.factory  # auto's choice, once made
    extra = {"batch_size": settings.batch_size, "index": factory, "tuning": writer.tuning,
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
