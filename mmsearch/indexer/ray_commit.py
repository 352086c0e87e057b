"""The Ray driver's bookkeeping: summary rows in, committed partitions out.

For every partition the driver collects one summary row per record, keyed by
(partition, ordinal), so a record delivered twice (a retried task) counts once.
When a partition is complete, and every partition before it has been resolved,
it is *resolved* in read order: duplicates across partitions are rejected (the
first occurrence wins, as in the local engine), rejections go to errors.jsonl,
the counts to the run's stats. Once the index is trained (on the first vectors
in read order, when the spec needs training) each resolved partition gets the
next global rows and shard numbers and a write task; their results are
committed in that same order, so the manifest and the store advance exactly as
the local engine's do, one partition at a time.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

import numpy as np

from ..errors import MMSearchError
from ..index_format import ShardInfo
from .ray_stages import END, OK, REJECTED, SKIPPED, STATS
from .routing import Router
from .staging import fresh_cache_entries, remove_staged, take_rows, vectors_of
from .writer import next_shard_number


@dataclass
class _Partition:
    rows: Dict[int, tuple] = field(default_factory=dict)  # ordinal -> (kind, id, claims, updated, where, reason, file)
    total: Optional[int] = None

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.rows) >= self.total


@dataclass
class _Resolved:
    part: int
    keep: List[Tuple[int, str]]  # (ordinal, staging file) of the rows to index, in read order

    def picks(self) -> Dict[str, List[int]]:
        out: Dict[str, List[int]] = defaultdict(list)
        for ordinal, name in self.keep:
            out[name].append(ordinal)
        return dict(out)


class Coordinator:
    def __init__(self, index_dir, labels: List[str], writer, store, settings, stats, errors, progress,
                 submit_write: Callable):
        self.index_dir = index_dir
        self.labels = labels                  # one per partition, for error messages
        self.writer, self.store, self.s = writer, store, settings
        self.stats, self.errors, self.progress = stats, errors, progress
        self.submit_write = submit_write      # (spec, part, picks, count, first_row, numbers) -> ObjectRef
        self.parts: Dict[int, _Partition] = defaultdict(_Partition)
        self.next = 0                         # the next partition to resolve
        self.claims = Router("skip", lambda _: False)
        self.ready: Deque[_Resolved] = deque()
        self.launched: Deque[Tuple[_Resolved, object]] = deque()
        self.cursor: Optional[Tuple[int, int]] = None   # (next global row, next shard number)
        self.spec = None
        self.users: Dict[str, Set[int]] = defaultdict(set)  # staging file -> partitions still needing it

    # --- input ---------------------------------------------------------------------------
    def feed(self, batch: Dict[str, np.ndarray]) -> None:
        """Take one batch of summary rows, then move every partition as far as it can go."""
        for i in range(len(batch["kind"])):
            kind, part, ordinal = str(batch["kind"][i]), int(batch["part"][i]), int(batch["ordinal"][i])
            if kind == STATS:
                self._worker_stats(json.loads(batch["info"][i]))
            elif part < self.next:
                continue  # a partition already resolved, delivered again by a retried task
            elif kind == END:
                if self.parts[part].total is None:
                    spent = json.loads(batch["info"][i])
                    self.stats.add_busy("read", spent["read"])
                    self.stats.add_busy("decode", spent["decode"])
                self.parts[part].total = ordinal
            elif ordinal not in self.parts[part].rows:
                row = tuple(batch[c][i] for c in ("kind", "id", "claims", "updated", "where", "reason", "file"))
                self.parts[part].rows[ordinal] = row
                if kind == OK:
                    self._stage(row[-1], part)
        self._advance(final=False)

    def _worker_stats(self, info: dict) -> None:
        self.stats.add_busy("encode", info["encode"], info["calls"])
        self.stats.add(cache_hits=info["cache_hits"], encoded=info["encoded"])

    def _stage(self, name: str, part: int) -> None:
        if name not in self.users:  # first sight of a batch: its fresh vectors go to the cache now
            fresh = fresh_cache_entries(self.index_dir, name)
            if fresh:
                self.store.cache_put_many(fresh)
        self.users[name].add(part)

    def finish(self) -> None:
        """After the last batch: everything must be resolvable; write and commit the rest."""
        for p in range(self.next, len(self.labels)):
            state = self.parts.get(p, _Partition())
            if not state.complete:
                got = len(state.rows)
                raise MMSearchError(f"partition {p} ({self.labels[p]}) came back incomplete: {got} records of "
                                    f"{'an unknown number' if state.total is None else state.total}")
        self._advance(final=True)

    def salvage(self) -> None:
        """After a failure: commit the partitions whose shards were already written."""
        while self.launched:
            try:
                self._commit_head()
            except Exception:
                return

    # --- resolve, in read order --------------------------------------------------------------
    def _advance(self, final: bool) -> None:
        while self.next < len(self.labels) and self.parts[self.next].complete:
            self._resolve(self.next, self.parts.pop(self.next))
            self.next += 1
        self._start(final)
        self._launch()
        self._collect(block=final)

    def _resolve(self, part: int, state: _Partition) -> None:
        keep: List[Tuple[int, str]] = []
        for ordinal in range(state.total):
            kind, item_id, claims, updated, where, reason, name = state.rows[ordinal]
            if claims:
                duplicate = self.claims.claim(item_id, where)
                if duplicate is not None:
                    kind, reason, updated = REJECTED, duplicate.reason, False
            self.stats.add(read=1, updated=int(bool(updated)))
            if kind == OK:
                keep.append((ordinal, name))
            elif kind == SKIPPED:
                self.stats.add(skipped=1)
            else:
                self.stats.add(rejected=1)
                self.errors.write(json.dumps({"id": item_id or None, "source": where, "reason": reason},
                                             ensure_ascii=False) + "\n")
        self.progress.update(state.total)
        resolved = _Resolved(part, keep)
        kept = set(resolved.picks())
        for name in [n for n, users in self.users.items() if part in users and n not in kept]:
            self._release(name, part)
        if keep:
            self.ready.append(resolved)

    def _release(self, name: str, part: int) -> None:
        self.users[name].discard(part)
        if not self.users[name]:
            remove_staged(self.index_dir, [name])

    # --- train once, then write and commit in order ---------------------------------------------
    def _start(self, final: bool) -> None:
        if not self.writer.ready:
            wanted = self.writer.train_size
            if not final and sum(len(r.keep) for r in self.ready) < wanted:
                return
            self.writer.start(self._sample(wanted) if self.ready else None)
        if self.cursor is None:
            m = self.writer.manifest
            self.cursor = (m.next_row, next_shard_number(m))
            self.spec = dataclasses.replace(m, shards=(), next_row=0).to_dict()

    def _sample(self, n: int) -> np.ndarray:
        """The first `n` vectors to index, in read order (the local engine trains on the same)."""
        chunks, got = [], 0
        for r in self.ready:
            chunks.append(vectors_of(take_rows(self.index_dir, r.part, r.picks())))
            got += len(r.keep)
            if got >= n:
                break
        return np.concatenate(chunks)[:n]

    def _launch(self) -> None:
        while self.ready and self.cursor is not None:
            r = self.ready.popleft()
            row, shard = self.cursor
            count = len(r.keep)
            numbers = list(range(shard, shard + math.ceil(count / self.s.shard_size)))
            self.cursor = (row + count, shard + len(numbers))
            ref = self.submit_write(self.spec, r.part, r.picks(), count, row, numbers)
            self.launched.append((r, ref))

    def _collect(self, block: bool) -> None:
        import ray

        while self.launched:
            if not block and not ray.wait([self.launched[0][1]], timeout=0)[0]:
                return
            self._commit_head()

    def _commit_head(self) -> None:
        import ray

        resolved, ref = self.launched[0]
        result = ray.get(ref)
        t0 = time.perf_counter()
        if result["thumbnails"]:
            self.store.put_thumbnails(result["thumbnails"])
        self.writer.commit([ShardInfo.from_dict(d) for d in result["shards"]], result["ids"])
        self.launched.popleft()
        self.stats.add(indexed=len(result["ids"]))
        self.stats.add_busy("write", result["seconds"] + time.perf_counter() - t0)
        for name in resolved.picks():
            self._release(name, resolved.part)
