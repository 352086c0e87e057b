"""`SearchService`: what the routes ask of an open `Index`.

Searches run on `limits.threads` worker threads (the index is thread-safe; torch's
threads are shared out between them, see `cores`), batched with others of the same
arguments (`batching.Batcher`); at most `limits.max_pending` are admitted at once
(then 503), each awaited for at most `limits.search_timeout` seconds (then 504). A text
query goes from the event loop straight to the batcher (a hop through a thread would
cost more than building it); query images are decoded on Starlette's thread pool, at
most `limits.threads` at once, and item and thumbnail reads run there too. Everything
here only reads the index.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from anyio import CapacityLimiter, to_thread

from mmsearch._version import __version__
from mmsearch.images import make_thumbnail
from mmsearch.index_format import lexical_fields
from mmsearch.query import Index, modality_counts
from mmsearch.tasks import list_tasks
from mmsearch.types import ITEM_MODALITIES, PARTS, Query, modalities_with

from .batching import Batcher, SearchArgs
from .cores import available_cores, torch_threads, torch_threads_per_search, use_torch_threads
from .errors import ApiError
from .inputs import decode_image
from .paths import PathView
from .schemas import SearchRequest, json_safe
from .settings import Limits
from .timing import Stopwatch

THUMBNAIL_SIDE = 256
_IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"))


class Batched(NamedTuple):
    """One query's hits, and when its batch of `batch` queries ran (perf_counter)."""

    hits: list
    started: float
    ended: float
    batch: int


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SearchService:
    def __init__(self, index: Index, limits: Limits, auth: bool = False):
        self.index, self.limits, self.auth = index, limits, auth
        share = torch_threads_per_search(limits.threads, available_cores())
        self._torch_before = torch_threads()  # restored at close (torch keeps it process-wide)
        self._batcher = Batcher(self._search_many, limits.threads, limits.max_batch,
                                initializer=partial(use_torch_threads, share))
        self._lock = threading.Lock()
        self._pending = 0
        self._tasks: Optional[List[Dict[str, Any]]] = None
        self._decode_limiter: Optional[Tuple[asyncio.AbstractEventLoop, CapacityLimiter]] = None
        self._paths: Optional[Tuple[Any, PathView]] = None
        self._counts: Optional[Tuple[Any, Any, Dict[str, int]]] = None

    # --- search --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Searches admitted and not finished (queued, running, or abandoned by a timeout)."""
        return self._pending

    async def search(self, req: SearchRequest, image: Optional[bytes], watch: Stopwatch) -> Dict[str, Any]:
        """Admit (503 beyond max_pending), build the query (off the event loop when that
        means decoding an image or reading an item), queue it for the batcher, and wait
        at most search_timeout seconds in all (then 504). `watch` gets the stages."""
        self._admit()
        try:
            if image is None and req.like is None:  # text alone: nothing slow to build
                query = Query(text=req.text)
            else:
                query = await to_thread.run_sync(self._query, req, image, limiter=self._decoders())
            watch.lap("query")
            # "more like this": one hit more, then the item itself is left out
            future = self._submit(SearchArgs.of(req if req.like is None else req.model_copy(update={"k": req.k + 1})),
                                  query)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        left = self.limits.search_timeout - (time.perf_counter() - watch.start)
        try:
            done = await asyncio.wait_for(asyncio.wrap_future(future), max(left, 0.001))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the search did not finish within {self.limits.search_timeout:g} s "
                                           f"(search_timeout)") from None
        watch.lap("wait", at=done.started)
        watch.lap("engine", at=done.ended)
        watch.lap("resume")
        watch.batch = done.batch
        hits = done.hits
        if req.like is not None:
            hits = [dataclasses.replace(h, rank=i + 1) for i, h in enumerate(h for h in hits if h.id != req.like)]
            hits = hits[:req.k]
        paths = self.paths()
        out = [json_safe({**h.to_dict(), "metadata": paths.metadata(h.metadata)}) for h in hits]
        watch.lap("hits")
        return {"hits": out, "k": req.k, "took_ms": round(watch.total_ms(), 3),
                "query": {"text": req.text, "image": image is not None, "like": req.like, "task": req.task,
                          "instruction": req.instruction, **req.mode_options()}}

    def _decoders(self) -> CapacityLimiter:
        """Bounds the query images decoded at once (each may take max_image_pixels * 3 bytes)."""
        loop = asyncio.get_running_loop()
        if self._decode_limiter is None or self._decode_limiter[0] is not loop:  # one per event loop
            self._decode_limiter = (loop, CapacityLimiter(self.limits.threads))
        return self._decode_limiter[1]

    def _submit(self, args: SearchArgs, query: Query) -> Future:
        try:
            return self._batcher.submit(args, query)
        except RuntimeError:
            raise ApiError(503, "busy", "the server is shutting down") from None

    def _search_many(self, args: SearchArgs, queries: List[Query]) -> List[Batched]:
        started = time.perf_counter()
        results = self.index.search(list(queries), **args.kwargs())
        ended = time.perf_counter()
        return [Batched(hits, started, ended, len(queries)) for hits in results]

    def _admit(self) -> None:
        with self._lock:
            if self._pending >= self.limits.max_pending:
                raise ApiError(503, "busy", f"{self._pending} searches are running or queued (max_pending); "
                                            "retry shortly", headers={"retry-after": "1"})
            self._pending += 1

    def _release(self, _: Optional[Future] = None) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self._batcher.close()
        use_torch_threads(self._torch_before)

    def warm_up(self) -> None:
        """Load the model and run one search, so the first client does not wait for it."""
        self.index.search("warm up", k=1)

    def _query(self, req: SearchRequest, image: Optional[bytes]) -> Query:
        if image is not None:
            return Query(text=req.text or None, image=decode_image(image, self.limits))
        if req.like is None:
            return Query(text=req.text)
        record = self.record(req.like, what="like")
        picture = self.index.candidate_image(record)
        if picture is not None:
            return Query(text=req.text or None, image=picture)
        if req.text:
            raise ApiError(400, "bad_request", f"like={req.like!r}: the item has no image to combine with text")
        if not record.get("text"):
            raise ApiError(400, "bad_request", f"like={req.like!r}: the item has neither an image nor text")
        return Query(text=record["text"])

    # --- items ---------------------------------------------------------------------------

    def record(self, item_id: str, what: str = "item") -> Dict[str, Any]:
        """The live record of an id (404 when unknown or deleted)."""
        if not 0 < len(item_id) <= self.limits.max_id_chars or not _encodable(item_id):
            raise ApiError(422, "validation_error", f"{what}: an item id of 1 to {self.limits.max_id_chars} "
                                                    f"characters of valid Unicode, got {len(item_id)}")
        record = self.index.get([item_id])[0]
        if record is None:
            raise ApiError(404, "not_found", f"{what}: no item with id {item_id[:200]!r} in this index")
        return record

    def item(self, item_id: str) -> Dict[str, Any]:
        record = dict(self.record(item_id))
        return {"id": record.pop("id"), "metadata": json_safe(self.paths().metadata(record))}

    def paths(self) -> PathView:
        """How file paths are shown (`paths`), for the index's current manifest."""
        manifest = self.index.manifest
        cached = self._paths
        if cached is None or cached[0] is not manifest:
            cached = self._paths = (manifest, PathView.of_index(self.index))
        return cached[1]

    def thumbnail(self, item_id: str) -> Tuple[bytes, str]:
        """(image bytes, media type): the store's thumbnail, else one made from the item's image."""
        record = self.record(item_id)
        store = self.index.view().store
        data = store.read(lambda s: s.get_thumbnail(item_id)) if store.exists else None
        if data is None:
            picture = self.index.candidate_image(record)
            if picture is None:
                raise ApiError(404, "not_found", f"item {item_id[:200]!r} has no image")
            data = make_thumbnail(picture, THUMBNAIL_SIDE)
        kind = next((t for magic, t in _IMAGE_TYPES if data.startswith(magic)), None)
        if kind is None:
            kind = "image/webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else "application/octet-stream"
        return data, kind

    def match_map(self, item_id: str, text: str) -> Dict[str, Any]:
        """Where on the item's page a text query matched (multi-vector indexes; `Index.match_map`)."""
        record = self.record(item_id)
        if self.index.view().manifest.multi_vector is None:
            raise ApiError(404, "not_found", "match maps need a multi-vector index (token vectors)")
        if not 0 < len(text) <= self.limits.max_text_chars:
            raise ApiError(422, "validation_error", f"text: 1 to {self.limits.max_text_chars} characters")
        return {"id": record["id"], **self.index.match_map(Query(text=text), record["id"])}

    # --- facts ---------------------------------------------------------------------------

    def info(self) -> Dict[str, Any]:
        view = self.index.view()
        m = view.manifest
        _, deleted = view.store.tombstones()
        dead = sum(len(d) for d in deleted)
        return json_safe({
            "mmsearch": __version__,
            "index": {"name": self.index.path.name, "rows": m.total_rows, "live": m.total_rows - dead,
                      "shards": len(m.shards), "faiss": m.faiss.factory, "metric": m.metric,
                      "search_params": dict(m.faiss.search_params), "columns": list(view.columns),
                      "candidate_instructions": dict(m.instructions), "updated": m.updated,
                      "modalities": self.modality_counts(view), "lexical": list(lexical_fields(m.extra)),
                      "multi_vector": m.multi_vector.to_dict() if m.multi_vector else None},
            "modalities": {"vocabulary": list(ITEM_MODALITIES),
                           "has": {part: list(modalities_with(part)) for part in PARTS}},
            # a local checkpoint's id is its folder: shown by name, like every path
            "model": {"id": self.paths().show(m.model.id), "backbone": m.model.backbone, "dim": m.model.dim, "dtype": m.model.dtype,
                      "pooling": m.model.pooling, "normalized": m.model.normalized},
            "limits": self.limits.public(), "auth": self.auth})

    def modality_counts(self, view) -> Dict[str, int]:
        """Live items per modality of a snapshot (cached until it or its deletions change)."""
        version, _ = view.store.tombstones()
        cached = self._counts
        if cached is None or cached[0] is not view or cached[1] != version:
            cached = self._counts = (view, version, modality_counts(view))
        return cached[2]

    def tasks(self) -> List[Dict[str, Any]]:
        if self._tasks is None:
            self._tasks = [{"name": t.name, "description": t.description, "source": t.source,
                            "meta_task": t.meta_task, "query_modality": t.query_modality,
                            "candidate_modality": t.candidate_modality, "query_instruction": t.query_instruction}
                           for t in list_tasks()]
        return self._tasks
