"""Where a request's time goes, in a ``Server-Timing`` header (milliseconds per stage).

    Server-Timing: parse;dur=0.12, query;dur=0.01, wait;dur=3.4, engine;dur=9.8, resume;dur=0.9,
                   hits;dur=0.15, json;dur=0.03, total;dur=14.4, batch;desc=12

parse: body read, JSON parsed and validated. query: the query built (an image decoded,
an item looked up). wait: queued until a search thread took its batch. engine: that
batch's `Index.search` (shared by `batch` queries). resume: from the batch's end until
the event loop ran the request again (thread hand-off, the loop's queue, the GIL).
hits: hits made JSON-safe. json: the body encoded. What a client measures beyond
`total` is HTTP parsing, routing, middleware and the socket. Browsers show the header
in their network panel; `benchmarks/serve_load.py` averages it under load.
"""
from __future__ import annotations

import time
from typing import List, Optional, Tuple


class Stopwatch:
    """Consecutive stages of one request."""

    __slots__ = ("start", "last", "stages", "batch")

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.stages: List[Tuple[str, float]] = []
        self.batch: Optional[int] = None

    def lap(self, name: str, at: Optional[float] = None) -> None:
        """End stage `name` now (or at the perf_counter time `at`, from another thread)."""
        now = time.perf_counter() if at is None else at
        self.stages.append((name, now - self.last))
        self.last = now

    def total_ms(self) -> float:
        return 1000 * (self.last - self.start)

    def header(self) -> str:
        parts = [f"{name};dur={1000 * seconds:.3f}" for name, seconds in self.stages]
        parts.append(f"total;dur={self.total_ms():.3f}")
        if self.batch is not None:
            parts.append(f"batch;desc={self.batch}")
        return ", ".join(parts)
