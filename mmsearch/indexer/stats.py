"""Counts and per-stage busy time of an indexing run; the summary and stats.json."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Optional

STAGES = ("read", "decode", "encode", "write")


@dataclass
class RunStats:
    read: int = 0
    indexed: int = 0
    rejected: int = 0
    skipped: int = 0          # already in the index (resume)
    updated: int = 0          # replaced an existing id (counted in indexed too)
    cache_hits: int = 0       # embeddings taken from the LMDB cache
    encoded: int = 0          # embeddings computed by the model
    busy: Dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    calls: Dict[str, int] = field(default_factory=lambda: {s: 0 for s in STAGES})
    started: float = field(default_factory=time.perf_counter)
    wall: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.busy[stage] += time.perf_counter() - t0
                self.calls[stage] += 1

    def add_busy(self, stage: str, seconds: float, calls: int = 1) -> None:
        """Busy time measured elsewhere (a worker process of the Ray engine)."""
        with self._lock:
            self.busy[stage] += seconds
            self.calls[stage] += calls

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.started

    @property
    def reconciled(self) -> bool:
        return self.read == self.indexed + self.rejected + self.skipped

    def to_dict(self, workers: int, extra: Optional[dict] = None, encoders: int = 1) -> dict:
        counts = ("read", "indexed", "rejected", "skipped", "updated", "cache_hits", "encoded")
        d = {k: getattr(self, k) for k in counts}
        wall = max(self.wall, 1e-9)
        d["busy_seconds"] = {k: round(v, 4) for k, v in self.busy.items()}
        d["calls"] = dict(self.calls)
        d["wall_seconds"] = round(self.wall, 4)
        d["items_per_second"] = round(self.indexed / wall, 2)
        # decode runs on `workers` at once (0: in the encoder thread), the model on `encoders`: shares per worker
        per = {"decode": max(workers, 1), "encode": encoders}
        d["utilisation"] = {s: round(self.busy[s] / wall / per.get(s, 1), 4) for s in STAGES}
        d["pipeline_efficiency"] = d["utilisation"]["encode"]  # model busy / wall
        d["reconciled"] = self.reconciled
        d.update(extra or {})
        return d
