"""`Batcher`: concurrent searches that share their parameters run as one `Index.search`.

Encoding dominates a search, and a model embeds a batch of queries for little more
than the price of one. Each of `threads` workers takes the oldest waiting group of
searches with equal arguments (k, task, instruction, filter, rerank, params), up to
`max_batch` of them, and answers them with one call. Nothing waits on purpose: with
idle workers a search runs alone at once; under load, searches queue while the workers
are busy and leave together. A batch that fails is retried one query at a time, so one
bad query fails alone.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

from mmsearch.types import Query

from .schemas import SearchRequest


@dataclass(frozen=True)
class SearchArgs:
    """The arguments of `Index.search` besides the query; equal `key` = batchable together."""

    key: str
    k: int = field(compare=False)
    task: Optional[str] = field(compare=False)
    instruction: Optional[str] = field(compare=False)
    filter: Any = field(compare=False)
    rerank: Any = field(compare=False)
    params: Any = field(compare=False)
    mode: Any = field(compare=False, default=None)  # mode, fusion, alpha, rrf_k (SearchRequest.mode_options)

    @classmethod
    def of(cls, req: SearchRequest) -> "SearchArgs":
        rerank = req.rerank.split(",") if isinstance(req.rerank, str) else (req.rerank or [])
        rerank = [r.strip().lower() for r in rerank if r.strip()] or None
        parts = (req.k, req.task, req.instruction, req.filter, rerank, req.params, req.mode_options())
        return cls(json.dumps(parts, sort_keys=True, default=str), req.k, req.task, req.instruction,
                   req.filter, rerank, req.params, req.mode_options())

    def kwargs(self) -> dict:
        return {"k": self.k, "task": self.task, "instruction": self.instruction, "filter": self.filter,
                "rerank": self.rerank, "params": self.params, **(self.mode or {})}


Job = Tuple[Query, Future]


class Batcher:
    """run(args, queries) -> one result per query, called from `threads` worker threads;
    each runs `initializer()` first, if given."""

    def __init__(self, run: Callable[[SearchArgs, List[Query]], List[Any]], threads: int, max_batch: int,
                 initializer: Optional[Callable[[], None]] = None):
        self._run, self._max, self._initializer = run, max_batch, initializer
        self._groups: "OrderedDict[SearchArgs, List[Job]]" = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._workers = [threading.Thread(target=self._work, name=f"mmsearch-search-{i}", daemon=True)
                         for i in range(threads)]
        for worker in self._workers:
            worker.start()

    def submit(self, args: SearchArgs, query: Query) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._groups.setdefault(args, []).append((query, future))
            self._cond.notify()
        return future

    @property
    def waiting(self) -> int:
        """Searches queued and not yet taken by a worker."""
        with self._cond:
            return sum(len(jobs) for jobs in self._groups.values())

    def close(self) -> None:
        """Cancel what waits, let running batches finish, stop the workers."""
        with self._cond:
            self._closed = True
            waiting = [job for jobs in self._groups.values() for job in jobs]
            self._groups.clear()
            self._cond.notify_all()
        for _, future in waiting:
            future.cancel()
        for worker in self._workers:
            worker.join()

    def _take(self) -> Optional[Tuple[SearchArgs, List[Job]]]:
        with self._cond:
            while not self._groups and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            args, jobs = next(iter(self._groups.items()))  # the group waiting longest
            if len(jobs) > self._max:
                self._groups[args] = jobs[self._max:]
                jobs = jobs[:self._max]
            else:
                del self._groups[args]
        return args, [job for job in jobs if job[1].set_running_or_notify_cancel()]

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while True:
            taken = self._take()
            if taken is None:
                return
            args, jobs = taken
            if jobs:
                self._execute(args, jobs)

    def _execute(self, args: SearchArgs, jobs: List[Job]) -> None:
        try:
            results = list(self._run(args, [query for query, _ in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"a batch of {len(jobs)} searches gave {len(results)} results")
        except Exception as e:
            if len(jobs) == 1:
                jobs[0][1].set_exception(e)
                return
            for job in jobs:
                self._execute(args, [job])
            return
        for (_, future), result in zip(jobs, results, strict=True):
            future.set_result(result)
