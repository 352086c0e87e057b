"""`open_index` / `Index`: search an index directory (DESIGN §2, §6).

    query -> instruction -> encoder -> per-shard ANN (threads, filters, tombstones)
          -> top-k heap merge -> optional rerankers -> hydrate metadata (Arrow take)

Opening is cheap: FAISS shards are memory-mapped where the index type allows it,
meta.arrow files are memory-mapped, vectors.npy is mapped only when a reranker
needs it, and the model loads on the first `search` that needs an embedding.
An `Index` is a read-only snapshot of the shards listed when it was opened
(deletions recorded in the store show up at once); it is safe to share between
threads. Reopen it to see shards added later.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.encoders import load_encoder
from mmsearch.errors import ImageError, IndexFormatError, InputError, ModelLoadError
from mmsearch.images import load_image
from mmsearch.index_format import STORE_DIR, ModelInfo, PathLike, check_model, read_manifest

from .filtered import FilterPolicy, RowMask, search_shard
from .filters import Filter, parse_filter
from .hits import Hit
from .merge import map_shards, merge_results, pad_result
from .params import SearchParams
from .queries import as_queries, with_instruction
from .rerank import RerankContext, make_reranker, parse_rerank
from .shard import Shard
from .tombstones import StoreView

QUERY_BANK_FILE = "query_bank.npy"
_MASK_CACHE_SIZE = 32


class Index:
    """An opened index. Build one with `open_index`."""

    def __init__(self, path: PathLike, encoder: Any = None, device: str = "auto",
                 policy: FilterPolicy = FilterPolicy()):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.policy, self._device = policy, device
        self.shards = [Shard(self.path, s, self.manifest.model.dim, self.manifest.metric)
                       for s in self.manifest.shards]
        self._starts = np.array([s.id_start for s in self.shards], dtype=np.int64)
        self._ends = np.array([s.info.id_end for s in self.shards], dtype=np.int64)
        self._store = StoreView(self.path / STORE_DIR, self._starts, self._ends)
        self._defaults = SearchParams.coerce(self.manifest.faiss.search_params, strict=False)
        self._columns = list(dict.fromkeys(c for s in self.shards for c in s.meta.column_names))
        self._lock = threading.Lock()
        self._encoder = None if encoder is None else self._checked_encoder(encoder)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._masks_cache: "OrderedDict[tuple, List[Optional[RowMask]]]" = OrderedDict()
        self._rerankers: Dict[str, Any] = {}
        self._bank: Optional[np.ndarray] = None

    # --- facts ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.manifest.total_rows

    def __repr__(self) -> str:
        return (f"Index({str(self.path)!r}, rows={len(self)}, shards={len(self.shards)}, "
                f"model={self.manifest.model.id!r}, faiss={self.manifest.faiss.factory!r})")

    @property
    def dim(self) -> int:
        return self.manifest.model.dim

    @property
    def keep_max(self) -> bool:
        """True when larger scores are better (inner product), False for l2 distances."""
        return self.manifest.metric == "inner_product"

    @property
    def columns(self) -> List[str]:
        """Every meta.arrow column of any shard (what filters may name)."""
        return list(self._columns)

    @property
    def candidate_instructions(self) -> Mapping[str, str]:
        """The instructions candidates were embedded with, by modality ("default" for the rest)."""
        return self.manifest.instructions

    # --- the encoder ---------------------------------------------------------------------

    @property
    def encoder(self):
        """The query encoder: the one passed to open_index, else the manifest's model,
        loaded on first use and checked against the manifest."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._checked_encoder(self._load_manifest_model())
        return self._encoder

    def _load_manifest_model(self):
        model = self.manifest.model
        try:
            return load_encoder(model.id, device=self._device, revision=model.revision)
        except ModelLoadError as e:
            raise ModelLoadError(f"index {self.path} was built with model {model.id!r}, which cannot be "
                                 f"loaded here ({e}); pass open_index(path, encoder=...) with the same "
                                 f"weights") from None

    def _checked_encoder(self, encoder):
        if isinstance(encoder, (str, os.PathLike)):
            encoder = load_encoder(encoder, device=self._device)
        built = self.manifest.model
        for name in ("name", "backbone", "dim", "encode"):
            if not hasattr(encoder, name):
                raise InputError(f"encoder={encoder!r} is not an mmsearch encoder (no .{name}); "
                                 f"pass one from mmsearch.load_encoder or a model id")
        used = ModelInfo(id=str(encoder.name), backbone=str(encoder.backbone), dim=int(encoder.dim),
                         dtype=built.dtype, weight_hash=getattr(encoder, "fingerprint", None),
                         pooling=built.pooling, normalized=built.normalized)
        check_model(built, used)
        return encoder

    # --- search --------------------------------------------------------------------------

    def search(self, query: Any, k: int = 10, task: Optional[str] = None, instruction: Optional[str] = None,
               filter: Optional[Mapping[str, Any]] = None, rerank: Any = None,
               params: Union[None, SearchParams, Mapping[str, Any]] = None) -> Union[List[Hit], List[List[Hit]]]:
        """Search with one query (-> list[Hit]) or a list of queries (-> list[list[Hit]]).

        A query is a str (text), an image (PIL, os.PathLike, bytes) or a `Query`.
        `task` picks the query instruction by task name; `instruction` gives it
        verbatim (see `mmsearch.query.queries` for the precedence). `filter`: see
        `mmsearch.query.filters`. `rerank`: a name ("refine", "hubness", "vlm"), a
        comma-separated or list chain of names, or reranker objects. `params`:
        per-call knobs such as ``{"nprobe": 32, "efSearch": 128, "k_factor": 8}``.
        """
        k = _check_k(k)
        queries, single = as_queries(query)
        filt, knobs, chain = self._parse(filter, params), self._knobs(params), self._chain(rerank)
        if not queries:
            return []
        queries = with_instruction(queries, task, instruction)
        xq = self.encoder.encode(queries, show_progress=False)
        fetch = max([k] + [stage.candidates(k) for stage in chain])
        D, I = self._search(xq, fetch, filt, knobs)
        ctx = RerankContext(self, xq, queries, k)
        history = [("ann", D, I)]
        for stage in chain:
            depth = stage.candidates(k)
            D, I = stage.rerank(ctx, D[:, :depth], I[:, :depth])
            history.append((stage.name, D, I))
        hits = self._hits(D[:, :k], I[:, :k], history)
        return hits[0] if single else hits

    def search_vectors(self, xq: np.ndarray, k: int, filter: Optional[Mapping[str, Any]] = None,
                       params: Union[None, SearchParams, Mapping[str, Any]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """faiss convention: float32 (n, d) in; D, I of shape (n, k) out, best first,
        I = global row ids, -1 (and the worst distance) where fewer than k rows qualify."""
        k = _check_k(k)
        return self._search(self._check_xq(xq), k, self._parse(filter, params), self._knobs(params))

    def _parse(self, filter, params) -> Optional[Filter]:
        filt = parse_filter(filter)
        if filt is not None:
            unknown = [c for c in filt.columns if c not in self._columns]
            if unknown:
                raise InputError(f"filter columns {unknown} are not in this index; columns: {self._columns}")
        return filt

    def _knobs(self, params) -> SearchParams:
        return SearchParams.coerce(params).over(self._defaults)

    def _check_xq(self, xq: Any) -> np.ndarray:
        x = np.asarray(xq)
        if x.ndim != 2 or x.shape[1] != self.dim or not np.issubdtype(x.dtype, np.number):
            hint = " (one query? pass xq[None, :])" if x.ndim == 1 else ""
            raise InputError(f"xq must be a numeric array of shape (n, {self.dim}), got {x.dtype} "
                             f"{x.shape}{hint}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _search(self, xq: np.ndarray, k: int, filt: Optional[Filter], knobs: SearchParams):
        n, rows = len(xq), len(self)
        width = max(1, min(k, rows))
        if not self.shards or n == 0:
            return pad_result(np.empty((n, 0), np.float32), np.empty((n, 0), np.int64), k, self.keep_max)
        masks = self._masks(filt)

        def one(i: int):
            return search_shard(self.shards[i], xq, width, knobs, masks[i], self.policy)

        parts = map_shards(self._pool(), one, range(len(self.shards)))
        D, I = merge_results(parts, width, self.keep_max)
        return pad_result(D, I, k, self.keep_max) if width < k else (D, I)

    def _pool(self) -> Optional[ThreadPoolExecutor]:
        if len(self.shards) < 2:
            return None
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    workers = min(len(self.shards), os.cpu_count() or 1)
                    self._executor = ThreadPoolExecutor(workers, thread_name_prefix="mmsearch-shard")
        return self._executor

    def _masks(self, filt: Optional[Filter]) -> List[Optional[RowMask]]:
        """Allowed rows of each shard (None: all): the filter's matches minus tombstones."""
        version, deleted = self._store.tombstones()
        if filt is None and not any(len(d) for d in deleted):
            return [None] * len(self.shards)
        key = (filt.key if filt else None, version)
        with self._lock:
            if key in self._masks_cache:
                self._masks_cache.move_to_end(key)
                return self._masks_cache[key]
        masks = []
        for shard, dead in zip(self.shards, deleted):
            mask = filt.mask(shard.meta) if filt else np.ones(shard.rows, dtype=bool)
            mask[dead] = False
            masks.append(None if mask.all() else RowMask(mask))
        with self._lock:
            self._masks_cache[key] = masks
            while len(self._masks_cache) > _MASK_CACHE_SIZE:
                self._masks_cache.popitem(last=False)
        return masks

    def _chain(self, rerank: Any) -> list:
        return parse_rerank(rerank, self._named_reranker)

    def _named_reranker(self, name: str):
        with self._lock:  # one instance per index, so lazy state (hubs, a judge) is kept
            if name not in self._rerankers:
                self._rerankers[name] = make_reranker(name)
            return self._rerankers[name]

    # --- rows: metadata, vectors, images ---------------------------------------------------

    def _by_shard(self, rows: np.ndarray):
        """Yield (shard, positions in `rows`, local rows) for each shard the rows touch."""
        rows = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        bad = (which < 0) | (rows >= self._ends[np.maximum(which, 0)]) if len(self.shards) else rows == rows
        if bad.any():
            raise InputError(f"rows {rows[bad][:5].tolist()} are not in this index; its shards hold rows "
                             f"{[(s.id_start, s.info.id_end) for s in self.shards][:5]}...")
        for i in np.unique(which):
            where = np.flatnonzero(which == i)
            yield self.shards[i], where, rows[where] - self.shards[i].id_start

    def records(self, rows: Sequence[int]) -> List[Dict[str, Any]]:
        """The meta.arrow row of each global row: {"id", "modality", "text", "image", ...}."""
        out: List[Optional[dict]] = [None] * len(rows)
        for shard, where, local in self._by_shard(rows):
            for pos, record in zip(where, shard.meta.take(pa.array(local)).to_pylist()):
                out[pos] = record
        return out

    def vectors(self, rows: Sequence[int], exact: bool = True) -> np.ndarray:
        """float32 (len(rows), dim): stored vectors of global rows (see Shard.vectors)."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for shard, where, local in self._by_shard(rows):
            out[where] = shard.vectors(local, exact=exact)
        return out

    def get(self, ids: Sequence[str]) -> List[Optional[Dict[str, Any]]]:
        """The records of item ids (None for ids unknown or deleted)."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        rows = self._rows_of(ids)
        _, deleted = self._store.tombstones()
        dead = set(int(r) + s.id_start for s, d in zip(self.shards, deleted) for r in d)
        live = [i for i, r in enumerate(rows) if r >= 0 and int(r) not in dead]
        out: List[Optional[dict]] = [None] * len(ids)
        for i, record in zip(live, self.records(rows[live])):
            out[i] = record
        return out

    def _rows_of(self, ids: List[str]) -> np.ndarray:
        if self._store.exists:
            return self._store.read(lambda store: store.rows_for(ids))
        rows = np.full(len(ids), -1, dtype=np.int64)
        wanted = pa.array(ids, type=pa.string())
        for shard in self.shards:
            pos = pc.index_in(wanted, value_set=shard.meta.column("id").combine_chunks()).to_numpy(
                zero_copy_only=False)
            found = ~np.isnan(pos.astype(float))
            rows[found] = pos[found].astype(np.int64) + shard.id_start
        return rows

    def candidate_image(self, record: Mapping[str, Any]):
        """The candidate's image (PIL) from its `image` reference, else its stored
        thumbnail, else None. Relative references resolve against the index folder,
        then ``manifest.extra["image_root"]``, then the working directory."""
        ref = record.get("image")
        if not ref:
            return None
        roots = [self.path, self.manifest.extra.get("image_root"), "."]
        paths = [Path(ref)] if Path(ref).is_absolute() else [Path(r) / ref for r in roots if r]
        for path in paths:
            if path.is_file():
                try:
                    return load_image(path)
                except ImageError:
                    break
        thumb = self._store.read(lambda s: s.get_thumbnail(record["id"])) if self._store.exists else None
        return load_image(thumb) if thumb else None

    def query_bank(self) -> np.ndarray:
        """``INDEX/query_bank.npy``: float32 (n, dim) query embeddings for hubness reranking."""
        if self._bank is None:
            path = self.path / QUERY_BANK_FILE
            if not path.is_file():
                raise InputError(f"hubness reranking needs a query bank: no {path}; pass "
                                 f"Hubness(bank=query_embeddings) or write {QUERY_BANK_FILE} (float32 (n, "
                                 f"{self.dim}) embeddings of typical queries)")
            try:
                self._bank = self.check_bank(np.load(path, allow_pickle=False))
            except (OSError, ValueError) as e:
                raise IndexFormatError(f"cannot read the query bank {path}: {e}") from e
        return self._bank

    def check_bank(self, bank: Any) -> np.ndarray:
        bank = np.asarray(bank)
        if bank.ndim != 2 or bank.shape[1] != self.dim or len(bank) == 0:
            raise InputError(f"query bank must be a non-empty (n, {self.dim}) array, got shape {bank.shape}")
        return np.ascontiguousarray(bank, dtype=np.float32)

    # --- hits ------------------------------------------------------------------------------

    def _hits(self, D: np.ndarray, I: np.ndarray, history) -> List[List[Hit]]:
        valid = I >= 0
        records = iter(self.records(I[valid]))
        stage_scores = [(name, [dict(zip(i.tolist(), d.tolist())) for d, i in zip(sd, si)])
                        for name, sd, si in history]
        names = [s.name for s in self.shards]
        which = np.searchsorted(self._starts, np.maximum(I, 0), side="right") - 1
        out = []
        for q in range(len(I)):
            hits = []
            for j in np.flatnonzero(valid[q]):
                row, record = int(I[q, j]), dict(next(records))
                scores = {name: per_query[q][row] for name, per_query in stage_scores if row in per_query[q]}
                hits.append(Hit(id=record.pop("id"), score=float(D[q, j]), rank=len(hits) + 1, metadata=record,
                                row=row, shard=names[which[q, j]], scores=scores))
            out.append(hits)
        return out

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k={k!r}: expected an int >= 1")
    return int(k)


def open_index(path: PathLike, encoder: Any = None, device: str = "auto") -> Index:
    """Open an index directory for search (read-only; see `Index`).

    `encoder`: None (load the manifest's model on first use), a loaded encoder, or a
    model id / checkpoint directory. One that does not match the model the index was
    built with raises IndexMismatchError naming both.
    """
    return Index(path, encoder=encoder, device=device)


def search(index_path: PathLike, query: Any, k: int = 5, *, encoder: Any = None, device: str = "auto",
           **kwargs: Any) -> Union[List[Hit], List[List[Hit]]]:
    """One-shot: open the index, search, close. `kwargs` go to `Index.search`."""
    with open_index(index_path, encoder=encoder, device=device) as index:
        return index.search(query, k=k, **kwargs)
