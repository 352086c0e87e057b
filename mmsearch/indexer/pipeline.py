"""The local engine: reader -> decode pool -> batched encoder -> shard writer.

Stages are joined by bounded queues, so a slow writer or model holds the
reader back instead of filling memory. Threads follow a budget
(`threads.plan_threads`): decode workers and torch's threads never outnumber
the cores, since a decode thread that takes a core from torch slows every
forward pass more than it saves. With decode workers (Pillow releases the GIL
while decoding) decoding overlaps the model; with none, the encoder thread
decodes each item as it takes it. The reader keeps input order: it queues
futures, and the encoder takes them in order, so two runs over the same input
give the same rows.
"""
from __future__ import annotations

import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import List, Optional

import numpy as np

from ..encoders.base import Encoder
from ..store import Store
from .encoding import encode_chunk
from .prepare import Prepared, Rejection, prepare
from .routing import REJECT, SKIP, Router
from .settings import BuildSettings
from .sources import iter_sources
from .stats import RunStats
from .threads import available_cores, plan_threads, torch_threads
from .writer import ShardWriter, warm_up_arrow

_END = object()
_SKIP = object()
CHUNK_BATCHES = 4  # encode this many batches' worth at once, so batches can be grouped by modality


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class _Deferred:
    """A call made by whoever first asks for its result: the encoder thread, when no worker decodes."""

    __slots__ = ("_call", "_value")

    def __init__(self, fn, arg):
        self._call = (fn, arg)

    def result(self):
        if self._call is not None:
            fn, arg = self._call
            self._value, self._call = fn(arg), None
        return self._value


class _InlineDecoder:
    """The executor of a run without decode workers (the `ThreadPoolExecutor` calls the pipeline uses)."""

    def submit(self, fn, arg) -> _Deferred:
        return _Deferred(fn, arg)

    def __enter__(self) -> "_InlineDecoder":
        return self

    def __exit__(self, *exc) -> None:
        return None


def _decoder(workers: int):
    if workers == 0:
        return _InlineDecoder()
    return ThreadPoolExecutor(workers, thread_name_prefix="mmsearch-decode")


class Pipeline:
    """One run over `sources` into `writer`. `exists(id)` says whether an id is already indexed."""

    def __init__(self, sources: List[str], settings: BuildSettings, encoder: Encoder, store: Store,
                 writer: ShardWriter, instructions: dict, exists, stats: RunStats, errors, progress):
        self.sources = sources
        self.s = settings
        self.encoder = encoder
        self.store = store
        self.writer = writer
        self.instructions = instructions
        self.exists = exists
        self.stats = stats
        self.errors = errors          # a file object: one JSON line per rejection
        self.progress = progress
        self.failure: Optional[BaseException] = None
        self.router = Router(settings.existing, exists)
        self.threads = plan_threads(available_cores(), settings.workers)
        self._stop = threading.Event()

    def describe(self) -> dict:
        t = self.threads
        return {"engine": "local", "workers": t.decode_workers, "torch_threads": t.torch_threads, "cores": t.cores,
                "encoders": 1}

    # --- stage 1: read (one thread; sources such as PDFs are not thread-safe) -------------
    def _read(self, pool, out: "queue.Queue") -> None:
        try:
            records = iter(iter_sources(self.sources, kind=self.s.source_kind, **dict(self.s.source_options)))
            while not self._stop.is_set():
                with self.stats.timed("read"):
                    rec = next(records, None)
                if rec is None:
                    break
                self.stats.add(read=1)
                out.put(self._route(rec, pool))
        except BaseException as e:  # surfaced by the encoder loop
            self.failure = e
        finally:
            out.put(_END)

    def _route(self, rec, pool):
        route = self.router.route(rec)
        if route.action == REJECT:
            return _done(route.rejection)
        if route.action == SKIP:
            return _done(_SKIP)
        if route.updated:
            self.stats.add(updated=1)
        return pool.submit(self._prepare, rec)

    # --- stage 2: decode (worker pool, or the encoder thread) ------------------------------
    def _prepare(self, rec):
        with self.stats.timed("decode"):
            return prepare(rec, self.instructions, self.s.max_image_pixels, self.s.thumbnails)

    # --- stage 3: encode (this thread), with the embedding cache --------------------------
    def _encode(self, chunk: List[Prepared]) -> None:
        enc = encode_chunk(self.encoder, chunk, self.store.cache_get_many, self.s.batch_size,
                           first=self.stats.encoded == 0)
        self.stats.add_busy("encode", enc.seconds, calls=1 if enc.encoded or enc.failed else 0)
        for i, reason in sorted(enc.failed.items()):
            self._reject(Rejection(chunk[i].item.id, chunk[i].where, reason))
        if enc.fresh:
            self.store.cache_put_many(enc.fresh)
        self.stats.add(cache_hits=enc.cache_hits, encoded=enc.encoded)
        ok = enc.ok
        thumbs = {p.item.id: p.thumbnail for p, good in zip(chunk, ok) if good and p.thumbnail}
        if thumbs:
            self.store.put_thumbnails(thumbs)
        tokens = None if enc.tokens is None else [t for t, good in zip(enc.tokens, ok) if good]
        self._write([p for p, good in zip(chunk, ok) if good], enc.vectors[ok], tokens)

    # --- stage 4: write (one thread) --------------------------------------------------------
    def _write(self, items: List[Prepared], vectors: np.ndarray, tokens: Optional[list] = None) -> None:
        if items:
            self._writes.put((items, vectors, tokens))
        self.stats.add(indexed=len(items))
        self.progress.update(len(items))

    def _writer_loop(self) -> None:
        try:
            warm_up_arrow()
            while True:
                job = self._writes.get()
                if job is _END:
                    if self.failure is None:  # a failed run keeps what it committed, adds nothing half-done
                        with self.stats.timed("write"):
                            self.writer.finish()
                    return
                with self.stats.timed("write"):
                    self.writer.add(*job)
        except BaseException as e:
            self.failure = self.failure or e
            self._stop.set()
            while self._writes.get() is not _END:  # drain so the encoder never blocks forever
                pass

    def _reject(self, r: Rejection) -> None:
        self.stats.add(rejected=1)
        self.errors.write(_json_line(r.to_json()))
        self.progress.update(1)

    # --- the runner ---------------------------------------------------------------------
    def run(self) -> None:
        inflight: "queue.Queue" = queue.Queue(maxsize=self.s.queue_size)
        self._writes: "queue.Queue" = queue.Queue(maxsize=4)
        chunk_size = (self.s.batch_size or self.encoder.default_batch_size) * CHUNK_BATCHES
        if self.s.show_progress:
            print(self.threads.describe(), file=sys.stderr)
        writer = threading.Thread(target=self._writer_loop, name="mmsearch-writer", daemon=True)
        writer.start()
        with torch_threads(self.threads.torch_threads), _decoder(self.threads.decode_workers) as pool:
            reader = threading.Thread(target=self._read, args=(pool, inflight), name="mmsearch-reader", daemon=True)
            reader.start()
            try:
                self._consume(inflight, chunk_size)
            except BaseException as e:
                self.failure = self.failure or e
            finally:
                self._stop.set()
                while reader.is_alive():  # unblock a reader waiting on a full queue
                    try:
                        inflight.get(timeout=0.05)
                    except queue.Empty:
                        pass
                self._writes.put(_END)
                writer.join()
        if self.failure is not None:
            raise self.failure

    def _consume(self, inflight: "queue.Queue", chunk_size: int) -> None:
        chunk: List[Prepared] = []
        while self.failure is None:
            fut = inflight.get()
            if fut is _END:
                break
            result = fut.result()
            if result is _SKIP:
                self.stats.add(skipped=1)
                self.progress.update(1)
            elif isinstance(result, Rejection):
                self._reject(result)
            else:
                chunk.append(result)
                if len(chunk) >= chunk_size:
                    self._encode(chunk)
                    chunk = []
        if chunk and self.failure is None:
            self._encode(chunk)


def _json_line(obj) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False) + "\n"
