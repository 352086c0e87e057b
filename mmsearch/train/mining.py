"""Hard negatives mined from an mmsearch index of the candidates.

The pool is the training file's distinct candidates (positives and data
negatives; `source="auto"`) or the items of an existing mmsearch index. At the
start and every `every` steps, the pool is indexed with the model being trained
(an exact Flat index in OUT/mining, built by `build_index` through the encoder's
own path), every training query is embedded, and its `k` best hits that are not
its positive (nor the query itself) are kept. An existing index is searched
directly while its model still matches the weights (at step 0, when training
starts from the model it was built with). Each step then draws `per_query` of a
query's kept hits as extra candidates for its batch.

`search_pool` is the one place that talks to the index, so the search backend
can change without touching the miner.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..encoders.base import Request
from ..errors import ImageError, IndexMismatchError
from .data import Example, Side
from .settings import MiningSettings

log = logging.getLogger("mmsearch.train")
QUERY_CHUNK = 512   # queries decoded and embedded together while mining


def write_pool_manifest(pool: Sequence[Side], path: Path) -> None:
    """A JSONL manifest (id = position in the pool, text, absolute image path) for build_index."""
    with open(path, "w", encoding="utf-8") as f:
        for j, side in enumerate(pool):
            row = {"id": str(j), **({"text": side.text} if side.text else {}),
                   **({"image": side.image} if side.image else {})}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_pool_index(encoder, pool: Sequence[Side], workdir: Path) -> Path:
    """An exact index of `pool` embedded by `encoder`; candidates' text is used as is
    (no added instruction), as in training."""
    from ..indexer.build import build_index

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    write_pool_manifest(pool, workdir / "pool.jsonl")
    build_index(workdir / "pool.jsonl", workdir / "index", encoder=encoder, index="Flat", instruction="",
                store_vectors=False, thumbnails=False, workers=1, show_progress=False)
    return workdir / "index"


def search_pool(index_dir: Path, encoder, queries: Callable[[int, int], List[Optional[Request]]], n: int,
                k: int, pool_ids: Dict[str, int]) -> np.ndarray:
    """(n, k) int64 pool positions of each query's top-k hits (-1 where missing).
    `queries(start, stop)` gives the requests of queries start..stop-1 (None: skip that query)."""
    from ..query import open_index

    out = np.full((n, k), -1, dtype=np.int64)
    with open_index(index_dir, encoder=encoder) as index:
        row_ids = [r["id"] for r in index.records(list(range(len(index))))]
        row_to_pool = np.array([pool_ids.get(i, -1) for i in row_ids] + [-1], dtype=np.int64)
        for start in range(0, n, QUERY_CHUNK):
            chunk = queries(start, min(n, start + QUERY_CHUNK))
            where = [start + i for i, r in enumerate(chunk) if r is not None]
            if not where or not len(index):
                continue
            xq = encoder.encode_requests([r for r in chunk if r is not None], show_progress=False)
            _, rows = index.search_vectors(np.ascontiguousarray(xq, dtype=np.float32), min(k, len(index)))
            out[where, :rows.shape[1]] = row_to_pool[rows]  # row -1 maps to the trailing -1
    return out


def index_pool(index_dir: Path) -> Tuple[List[Side], List[str]]:
    """The items of an existing index as training candidates, with their item ids: text
    with the instruction it was embedded with (a rendered page is its image alone).
    Items whose image is not a file on disk are left out."""
    from ..query import open_index

    pool, ids = [], []
    with open_index(index_dir) as index:
        for r in index.records(list(range(len(index)))):
            image = r.get("image") or None
            if image is not None and not os.path.isfile(image):
                continue
            page = image is not None and "page" in r and "pages" in r
            instruction = index.manifest.instruction_for("page" if page else r.get("modality") or "")
            text = " ".join(p for p in (instruction, None if page else r.get("text")) if p) or None
            pool.append(Side(text, image))
            ids.append(str(r["id"]))
    return pool, ids


def _or_none(request: Callable[[Side], Request], side: Side) -> Optional[Request]:
    """The query's request, or None when its image cannot be loaded (it gets no mined negatives)."""
    try:
        return request(side)
    except ImageError:
        return None


class Miner:
    """Keeps, per training example, its best-ranked pool candidates that are not its positive."""

    def __init__(self, settings: MiningSettings, examples: Sequence[Example], pool: Sequence[Side], workdir: Path,
                 item_ids: Optional[Sequence[str]] = None):
        self.settings, self.examples, self.workdir = settings, examples, workdir
        self.pool = list(pool)
        self.item_ids = list(item_ids) if item_ids is not None else None  # of the pool in the given index
        where = {s: j for j, s in enumerate(self.pool)}
        self.positive = np.array([where.get(ex.positive, -1) for ex in examples], dtype=np.int64)
        self.itself = np.array([where.get(ex.query, -1) for ex in examples], dtype=np.int64)
        self.table: Optional[np.ndarray] = None
        self.mined_at: Optional[int] = None

    @classmethod
    def create(cls, settings: MiningSettings, examples: Sequence[Example], candidates: Sequence[Side],
               workdir: Path) -> "Miner":
        if settings.source == "auto":
            return cls(settings, examples, candidates, workdir)
        pool, ids = index_pool(Path(settings.source))
        return cls(settings, examples, pool, workdir, item_ids=ids)

    def due(self, step: int) -> bool:
        every = self.settings.every
        return self.table is None or (every > 0 and step % every == 0 and step != self.mined_at)

    def refresh(self, encoder, request: Callable[[Side], Request], step: int) -> dict:
        """Re-mine with `encoder` (in eval mode, no grad)."""
        t0 = time.perf_counter()
        extra = 2  # the positive and the query itself may take a slot each
        index_dir, ids = self._index(encoder)
        hits = search_pool(index_dir, encoder, lambda a, b: [_or_none(request, ex.query) for ex in self.examples[a:b]],
                           len(self.examples), self.settings.k + extra, {i: j for j, i in enumerate(ids)})
        self.table = self.filter(hits)
        self.mined_at = step
        found = float((self.table >= 0).sum(axis=1).mean())
        return {"step": step, "event": "mine", "pool": len(self.pool), "negatives_per_query": round(found, 2),
                "seconds": round(time.perf_counter() - t0, 3)}

    def _index(self, encoder) -> Tuple[Path, List[str]]:
        """The index to search and the item id of each pool position in it."""
        if self.item_ids is not None and self.mined_at is None:
            from ..query import open_index

            try:
                open_index(self.settings.source, encoder=encoder).close()
                return Path(self.settings.source), self.item_ids
            except IndexMismatchError:
                log.info("mining: %s was built with other weights; re-indexing its items", self.settings.source)
        return build_pool_index(encoder, self.pool, self.workdir), [str(j) for j in range(len(self.pool))]

    def filter(self, hits: np.ndarray) -> np.ndarray:
        """Drop each row's positive and the query itself, keep the first k others."""
        bad = (hits == self.positive[:, None]) | (hits == self.itself[:, None]) | (hits < 0)
        out = np.full((len(hits), self.settings.k), -1, dtype=np.int64)
        for i, (row, drop) in enumerate(zip(hits, bad)):
            kept = row[~drop][:self.settings.k]
            out[i, :len(kept)] = kept
        return out

    def sample(self, i: int, rng: np.random.Generator) -> List[Side]:
        """`per_query` distinct mined negatives of example i, drawn from its kept hits."""
        if self.table is None:
            return []
        kept = self.table[i][self.table[i] >= 0]
        take = min(self.settings.per_query, len(kept))
        return [self.pool[j] for j in rng.choice(kept, size=take, replace=False)] if take else []

    def state(self) -> dict:
        return {"table": self.table, "mined_at": self.mined_at}

    def load_state(self, state: dict) -> None:
        self.table, self.mined_at = state["table"], state["mined_at"]
