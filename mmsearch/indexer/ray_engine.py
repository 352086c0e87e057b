"""`--engine ray`: the indexer's own stages, distributed with Ray Data.

    partitions (plan_partitions, on the driver; deterministic slices of the sources)
      -> decode   Ray Data task per partition (CPU): read, route, prepare   [ray_stages]
      -> encode   map_batches over an actor pool: one actor per GPU, or CPU actors;
                  embedding cache, then a staging file per batch            [ray_stages]
      -> driver   summary rows per record: resolve partitions in read order, train,
                  assign rows and shard numbers, launch a write task per
                  partition, commit manifest + store in order              [ray_commit]
      -> write    Ray task per partition: its own shards, unlisted until committed

Only the driver writes manifest.json, errors.jsonl, stats.json and store.lmdb.
Exactly once: every record is keyed by (partition, ordinal); a retried decode or
encode task may deliver a record twice, the driver keeps the first; a retried
write task rewrites the same shard names with the same rows. Resume: committed
partitions' ids are in the index, so a rerun skips them before decoding (the
same rule as the local engine), and vectors encoded before a crash come back
from the embedding cache, which the driver fills as batches arrive.
"""
from __future__ import annotations

import dataclasses
import itertools
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import InputError, MMSearchError
from ..index_format import open_shard_meta, store_path
from .partitions import plan_partitions
from .pipeline import CHUNK_BATCHES
from .ray_commit import Coordinator
from .ray_stages import CacheReader, EncodeActor, Job, KnownIds, decode_partition, write_partition
from .settings import BuildSettings
from .staging import staging_dir

# Retries: Ray reruns a decode task whose worker dies (Ray's default, 3 times); Ray Data
# restarts a dead encoder actor and resubmits its batches (its default: no limit); a
# write task is rerun this often:
WRITE_RETRIES = 3


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MMSearchError('--engine ray needs Ray Data: pip install "ray[data]" (or mmsearch[ray])') from None
    return ray


@dataclass(frozen=True)
class Cluster:
    cpus: float
    gpus: float
    node_id: str   # the driver's node: the store's cache reader runs there


@contextmanager
def ray_session(address: Optional[str]):
    """Connect to Ray and describe the cluster. `address` None: $RAY_ADDRESS or a cluster
    started on this machine with `ray start`, else a new local one; "auto" or HOST:PORT:
    join that cluster. A connection the caller already made is reused as it is.
    Disconnects only what it connected."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:  # worker output stays in Ray's logs: the driver's stderr carries our progress bar
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    try:
        res = ray.cluster_resources()
        yield Cluster(float(res.get("CPU", 0)), float(res.get("GPU", 0)), ray.get_runtime_context().get_node_id())
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class ActorPlan:
    size: int
    num_cpus: float
    num_gpus: int
    device: str
    dtype: str


def actor_plan(settings: BuildSettings, cluster: Cluster) -> ActorPlan:
    """One actor per GPU (unless --device cpu); else CPU actors leaving half the CPUs to decoding."""
    wants_gpu = settings.device == "auto" or settings.device.startswith("cuda")
    if settings.device.startswith("cuda") and cluster.gpus < 1:
        raise InputError(f"--device {settings.device} but the Ray cluster has no GPUs "
                         f"({cluster.cpus:g} CPUs); use --device auto or cpu")
    cpus = settings.ray_actor_cpus
    if wants_gpu and cluster.gpus >= 1:
        dtype = "bfloat16" if settings.dtype == "auto" else settings.dtype
        return ActorPlan(settings.ray_actors or int(cluster.gpus), cpus, 1, "cuda", dtype)
    size = settings.ray_actors or max(1, int(cluster.cpus // (2 * cpus)))
    return ActorPlan(size, cpus, 0, "cpu", settings.dtype)


def driver_encoder_options(settings: BuildSettings, cluster: Cluster) -> dict:
    """The driver loads the model only to describe it: on the CPU, in the actors' dtype."""
    return {"device": "cpu", "dtype": actor_plan(settings, cluster).dtype}


class RayEngine:
    """One run on Ray; the same inputs and outputs as `pipeline.Pipeline`."""

    def __init__(self, cluster: Cluster, sources: List[str], out: Path, settings: BuildSettings, encoder, store,
                 writer, instructions: dict, stats, errors, progress):
        self.cluster, self.sources, self.out, self.s = cluster, sources, Path(out), settings
        self.encoder, self.store, self.writer, self.instructions = encoder, store, writer, instructions
        self.stats, self.errors, self.progress = stats, errors, progress
        self.actors = actor_plan(settings, cluster)
        self.partitions: list = []

    def describe(self) -> dict:
        decode_slots = max(1, int(self.cluster.cpus - self.actors.size * self.actors.num_cpus))
        return {"engine": "ray", "workers": decode_slots, "encoders": self.actors.size,
                "partitions": len(self.partitions), "partition_size": self.s.partition_size,
                "actor": {"num_cpus": self.actors.num_cpus, "num_gpus": self.actors.num_gpus,
                          "device": self.actors.device},
                "cluster": {"CPU": self.cluster.cpus, "GPU": self.cluster.gpus}}

    def run(self) -> None:
        ray = import_ray()
        from ray.data import DataContext

        self.partitions = plan_partitions(self.sources, self.s.source_kind, dict(self.s.source_options),
                                          self.s.partition_size)
        cache = self._cache_reader()
        coord = Coordinator(self.out, [p.label for p in self.partitions], self.writer, self.store, self.s,
                            self.stats, self.errors, self.progress, self._submitter())
        context = DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, False  # ours shows items/s
        try:
            if not self.writer.ready and not self.writer.plan.needs_training:
                self.writer.start(None)
            for batch in self._dataset(self._job(cache)).iter_batches(batch_size=None, batch_format="numpy"):
                coord.feed(batch)
            coord.finish()
        except BaseException:
            coord.salvage()  # keep what is already written: a rerun resumes after it
            raise
        finally:
            context.enable_progress_bars = bars
            if cache is not None:
                ray.kill(cache)
            shutil.rmtree(staging_dir(self.out), ignore_errors=True)

    def _job(self, cache) -> Job:
        return Job(index_dir=str(self.out), partitions=tuple(self.partitions),
                   source_options=dict(self.s.source_options), instructions=dict(self.instructions),
                   max_image_pixels=self.s.max_image_pixels, thumbnails=self.s.thumbnails,
                   existing=self.s.existing, model=self.encoder.name, device=self.actors.device,
                   dtype=self.actors.dtype, weight_hash=self.encoder.fingerprint, batch_size=self.s.batch_size,
                   family=getattr(self.encoder, "family", None), dim=self.encoder.dim,
                   adapter=getattr(getattr(self.encoder, "recipe", None), "adapter", None),
                   known=self._known_ids(), cache=cache)

    def _known_ids(self) -> KnownIds:
        """The ids already indexed: decode tasks skip (or reject, or replace) them."""
        m = self.writer.manifest
        if m is None:
            return KnownIds()
        shards = (open_shard_meta(self.out, s).column("id").to_pylist() for s in m.shards)
        # a build (existing="skip") also skips ids compacted away: they come back only through `index add`
        removed = self.store.removed_ids() if self.s.existing == "skip" else []
        return KnownIds(itertools.chain(itertools.chain.from_iterable(shards), removed))

    def _cache_reader(self):
        """An actor serving cache lookups from the driver node, when the cache has entries."""
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self.store.count_cached() == 0:
            return None
        here = NodeAffinitySchedulingStrategy(self.cluster.node_id, soft=False)
        reader = ray.remote(CacheReader).options(num_cpus=0, max_concurrency=4, scheduling_strategy=here)
        return reader.remote(str(store_path(self.out)))

    def _submitter(self):
        ray = import_ray()
        task = ray.remote(write_partition).options(num_cpus=1, max_retries=WRITE_RETRIES)
        out, size, vectors = str(self.out), self.s.shard_size, self.s.store_vectors

        def submit(spec: dict, part: int, picks: dict, count: int, first_row: int, numbers: List[int]):
            return task.remote(out, spec, part, picks, count, first_row, numbers, size, vectors)
        return submit

    def _dataset(self, job: Job):
        """Decode tasks get the whole job once, through the object store; the actors only a
        small copy without the partitions and known ids, passed by value, so that an actor
        restart never depends on an object in the store."""
        ray = import_ray()

        job_ref = ray.put(job)
        actor_job = dataclasses.replace(job, partitions=(), known=KnownIds())
        n = len(self.partitions)
        ds = ray.data.from_items([{"part": p.index} for p in self.partitions], override_num_blocks=n)
        # flat_map may change the row count, so Ray Data keeps it a task stage of its own
        # rather than fusing it into the actors: decoding never holds up the model
        ds = ds.flat_map(decode_partition, fn_kwargs={"job": job_ref}, num_cpus=1)
        chunk = (self.s.batch_size or self.encoder.default_batch_size) * CHUNK_BATCHES
        a = self.actors
        return ds.map_batches(EncodeActor, batch_size=chunk, batch_format="numpy",
                              fn_constructor_kwargs={"job": actor_job},
                              compute=ray.data.ActorPoolStrategy(size=a.size), num_cpus=a.num_cpus,
                              num_gpus=a.num_gpus)

