"""Searching several shards: spread over threads when that pays, one OpenMP thread each.

faiss parallelises one search itself with OpenMP. Calling it from several threads,
each with a full OpenMP team, oversubscribes the cores: the teams spin at their
barriers waiting for each other (the 4-shard search that ran at half the QPS of one
shard). So shards are spread over a pool of threads, one per core, whose faiss calls
run with a one-thread OpenMP team (libgomp keeps that setting per thread). The split
is balanced whatever the number of shards: a batch is cut into one slice of queries
per thread, each thread searching every shard; fewer queries than threads share out
the shards instead.

Handing work to a pool thread costs tens of microseconds, more than a whole HNSW or
IVF search of one query, so the shards are spread only when a running estimate of
their work says the time saved exceeds the hand-offs; otherwise the calling thread
searches them one after another, with its own OpenMP settings.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

import faiss
import numpy as np

from .merge import Result

_CPUS = os.cpu_count() or 1


class CostModel:
    """A running estimate (EWMA) of the CPU seconds one shard search costs per query.
    Updated without a lock: a lost update only delays the estimate."""

    def __init__(self, handoff: float = 1e-4, alpha: float = 0.2):
        self.handoff, self.alpha = handoff, alpha  # seconds a pool hand-off costs, with margin
        self.per_query: Optional[float] = None     # unknown: try the pool and measure

    def observe(self, seconds: float, n: int) -> None:
        value = seconds / max(n, 1)
        old = self.per_query
        self.per_query = value if old is None else old + self.alpha * (value - old)

    def parallel_pays(self, n: int, shards: int, workers: int) -> bool:
        """Whether spreading `shards` searches of `n` queries over `workers` threads (as
        `Fanout` splits them) saves more time than the hand-offs cost."""
        if self.per_query is None:
            return True
        sequential = self.per_query * n * shards
        per_thread = -(-n // workers) * shards if n >= workers else n * -(-shards // workers)
        return sequential - self.per_query * per_thread > self.handoff * (workers - 1)


@contextmanager
def _omp_threads(count: int) -> Iterator[None]:
    """This thread's OpenMP team size, for the duration (other threads keep theirs)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class Fanout:
    """Searches every shard for a batch of queries, in the calling thread or spread over
    up to `workers` threads (the caller being one of them), never more than the caller's
    OpenMP thread count (`faiss.omp_set_num_threads` caps it). Thread-safe.

    Spread, each thread takes a slice of the queries over every shard when there are
    at least as many queries as threads, else a share of the shards for every query:
    balanced either way, whatever the number of shards."""

    def __init__(self, workers: int = _CPUS, cost: Optional[CostModel] = None):
        self.workers = max(1, workers)
        self.cost = cost or CostModel()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def map(self, search: Callable[[int, np.ndarray], Result], shards: int, xq: np.ndarray) -> List[Result]:
        """[search(s, xq) for s in range(shards)]. `search(s, queries)` returns (D, I) of
        one width for every slice of the queries."""
        n, workers = len(xq), min(self.workers, faiss.omp_get_max_threads())  # the caller's thread budget
        if shards < 2 or workers < 2 or not self.cost.parallel_pays(n, shards, workers):
            return [self._timed(search, s, xq) for s in range(shards)]
        if n >= workers:  # thread j: query slice j on every shard
            bounds = np.linspace(0, n, workers + 1).astype(int)
            groups = [[(s, slice(a, b)) for s in range(shards)] for a, b in zip(bounds[:-1], bounds[1:])]
        else:  # thread j: every query on shards j, j + workers, ...
            groups = [[(s, slice(0, n)) for s in range(j, shards, workers)] for j in range(min(workers, shards))]
        per_shard: List[List[Result]] = [[] for _ in range(shards)]
        for group, results in zip(groups, self._run(search, groups, xq)):  # groups in query order
            for (s, _), result in zip(group, results):
                per_shard[s].append(result)
        return [r[0] if len(r) == 1 else (np.concatenate([D for D, _ in r]), np.concatenate([I for _, I in r]))
                for r in per_shard]

    def _run(self, search, groups: list, xq: np.ndarray) -> List[List[Result]]:
        """Every group's results; group 0 runs in this thread, the others in the pool."""
        def run(group):
            return [self._timed(search, s, xq[q]) for s, q in group]

        futures = [self._pool().submit(run, group) for group in groups[1:]]
        try:
            with _omp_threads(1):  # the caller works as a pool thread does
                first = run(groups[0])
        finally:
            wait(futures)  # never leave work running on behalf of a failed call
        return [first] + [f.result() for f in futures]

    def _timed(self, search, shard: int, xq: np.ndarray) -> Result:
        start = time.thread_time()  # CPU time: waiting for the GIL or a core is not cost
        out = search(shard, xq)
        self.cost.observe(time.thread_time() - start, len(xq))
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="mmsearch-shard",
                                                        initializer=faiss.omp_set_num_threads, initargs=(1,))
        return self._executor

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

