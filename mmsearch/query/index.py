"""`open_index` / `Index`: search an index directory (DESIGN §2, §6).

    query -> instruction -> encoder -> per-shard ANN (threads when that pays; filters, tombstones)
          -> top-k heap merge -> optional rerankers -> hydrate metadata (Arrow take)

Opening is cheap: FAISS shards are memory-mapped where the index type allows it,
meta.arrow files are memory-mapped, vectors.npy is mapped only when a reranker
needs it, and the model loads on the first `search` that needs an embedding.

An `Index` is safe to share between threads. Each call works on one consistent
`IndexView` (the shards one manifest lists); when manifest.json is replaced (shards
added, rows renumbered by a compaction) the next call switches to the new version.
Deletions recorded in the store apply from the next call on.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mmsearch.encoders import BUILTIN_MODELS, load_encoder, load_text_encoder
from mmsearch.errors import InputError, ModelLoadError
from mmsearch.index_format import (ModelInfo, PathLike, check_model, load_query_bank,
                                   load_query_bank_info, model_info_of, query_bank_paths)
from mmsearch.types import Query

from .filtered import FilterPolicy, search_shard
from .filters import Filter, parse_filter
from .hits import Hit
from .hybrid import RRF_K, SearchMode
from .lexical import LexicalShards
from .late import MaxSim, match_map
from .fanout import Fanout
from .merge import merge_results, pad_result
from .params import SearchParams
from .queries import as_queries, with_instruction
from .rerank import make_reranker, parse_rerank
from .rerank_context import QueryBank, RerankContext, check_bank, sort_result
from .view import IndexView, Tombstones

RUNTIMES = ("torch", "numpy")  # how queries are embedded: see open_index


def _warn_legacy_rule(path: Path, model: ModelInfo) -> None:
    """An index from before embedding families, of a checkpoint whose family is not
    mmsearch's own, was embedded under a rule its authors do not use: say so."""
    note = model.legacy_rule_note()
    if note and model.id not in BUILTIN_MODELS:
        warnings.warn(f"index {path}: {note}", stacklevel=3)


class Index:
    """An opened index. Build one with `open_index`."""

    def __init__(self, path: PathLike, encoder: Any = None, device: str = "auto",
                 policy: FilterPolicy = FilterPolicy(), runtime: str = "torch", join_shards: bool = True):
        self.path = Path(path)
        self._join_shards = join_shards  # IVF shards searched as one index (mmsearch.query.joined)
        self.policy, self._device = policy, device
        if runtime not in RUNTIMES:
            raise InputError(f"runtime={runtime!r}: expected one of {list(RUNTIMES)}")
        self._runtime, self.runtime_note = runtime, runtime
        self._view = IndexView(self.path, join=join_shards)
        _warn_legacy_rule(self.path, self._view.manifest.model)
        self._lock = threading.Lock()           # the view, named rerankers
        self._encoder_lock = threading.Lock()   # held while a model loads
        self._encoder = None if encoder is None else self._checked_encoder(encoder)
        self._fanout = Fanout()  # shards in parallel threads when that pays
        self._lexical = LexicalShards(self.path)  # tantivy searchers, opened on the first lexical search
        self._rerankers: Dict[str, Any] = {}
        self._bank: Optional[np.ndarray] = None
        self._bank_info: Optional[dict] = None

    def view(self) -> IndexView:
        """The current snapshot (re-read when manifest.json has been replaced)."""
        view = self._view
        if view.is_current():
            return view
        with self._lock:
            if not self._view.is_current():
                fresh = IndexView(self.path, previous=self._view, join=self._join_shards)
                if self._encoder is not None and fresh.manifest.model != self._view.manifest.model:
                    check_model(fresh.manifest.model, self._model_info(self._encoder, fresh.manifest.model))
                self._view = fresh
            return self._view

    @property
    def manifest(self):
        return self.view().manifest

    @property
    def shards(self):
        return self.view().shards

    # --- facts ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.view().rows

    def __repr__(self) -> str:
        m = self._view.manifest
        return (f"Index({str(self.path)!r}, rows={m.total_rows}, shards={len(m.shards)}, "
                f"model={m.model.id!r}, faiss={m.faiss.factory!r})")

    @property
    def dim(self) -> int:
        return self._view.manifest.model.dim

    @property
    def keep_max(self) -> bool:
        """True when larger scores are better (inner product), False for l2 distances."""
        return self._view.manifest.metric == "inner_product"

    @property
    def columns(self) -> List[str]:
        """Every meta.arrow column of any shard (what filters may name)."""
        return list(self.view().columns)

    @property
    def candidate_instructions(self) -> Mapping[str, str]:
        """The instructions candidates were embedded with, by modality ("default" for the rest)."""
        return self.view().manifest.instructions

    # --- the encoder ---------------------------------------------------------------------

    @property
    def encoder(self):
        """The query encoder: the one passed to open_index, else the manifest's model,
        loaded on first use and checked against the manifest."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    self._encoder = self._checked_encoder(self._load_manifest_model())
        return self._encoder

    def _load_manifest_model(self):
        model = self.manifest.model
        try:
            return self._load(model.id, revision=model.revision, **self.manifest.encoder_options())
        except ModelLoadError as e:
            raise ModelLoadError(f"index {self.path} was built with model {model.id!r}, which cannot be "
                                 f"loaded here ({e}); pass open_index(path, encoder=...) with the same "
                                 f"weights") from None

    def _load(self, model, **options):
        """Load by the index's runtime: "numpy" runs text-only queries without torch where the
        checkpoint allows (`encoders.text_runtime`), and says why not in `runtime_note`."""
        if self._runtime == "numpy":
            encoder, why = load_text_encoder(model, device=self._device, **options)
            if encoder is not None:
                self.runtime_note = "numpy for text queries (torch loads for the first image)"
                return encoder
            self.runtime_note = f"torch (the numpy runtime does not run this model: {why})"
        return load_encoder(model, device=self._device, **options)

    def _checked_encoder(self, encoder):
        if isinstance(encoder, (str, os.PathLike)):  # the same weights elsewhere: embed as the index did
            encoder = self._load(encoder, **self.manifest.encoder_options())
        encoder = self._fde_view(encoder)
        for name in ("name", "backbone", "dim", "encode"):
            if not hasattr(encoder, name):
                raise InputError(f"encoder={encoder!r} is not an mmsearch encoder (no .{name}); "
                                 f"pass one from mmsearch.load_encoder or a model id")
        built = self.manifest.model
        check_model(built, self._model_info(encoder, built))
        return encoder

    def _fde_view(self, encoder):
        """A multi-vector model searches a multi-vector index through its FDEs, made with the
        MUVERA arguments the index was built with (`encoders.fde`)."""
        spec = self.manifest.multi_vector
        if spec is None or not getattr(encoder, "multi_vector", False):
            return encoder
        from mmsearch.encoders import FdeEncoder

        return FdeEncoder(encoder, spec.fde)

    @staticmethod
    def _model_info(encoder, built: ModelInfo) -> ModelInfo:
        """What the encoder can tell about itself; pooling and normalisation are not
        properties an encoder exposes, so the manifest's are taken."""
        return model_info_of(encoder, dtype=built.dtype, pooling=built.pooling, normalized=built.normalized)

    # --- search --------------------------------------------------------------------------

    def search(self, query: Any, k: int = 10, task: Optional[str] = None, instruction: Optional[str] = None,
               filter: Optional[Mapping[str, Any]] = None, rerank: Any = None,
               params: Union[None, SearchParams, Mapping[str, Any]] = None, mode: str = "vector",
               fusion: Optional[str] = None, alpha: Optional[float] = None,
               rrf_k: float = RRF_K) -> Union[List[Hit], List[List[Hit]]]:
        """Search with one query (-> list[Hit]) or a list of queries (-> list[list[Hit]]).

        A query is a str (text), an image (PIL, os.PathLike, bytes) or a `Query`.
        `task` picks the query instruction by task name; `instruction` gives it
        verbatim (see `mmsearch.query.queries` for the precedence). `filter`: see
        `mmsearch.query.filters`. `rerank`: a name ("refine", "hubness", "vlm"), a
        comma-separated or list chain of names, or reranker objects. `params`:
        per-call knobs such as ``{"nprobe": 32, "efSearch": 128, "k_factor": 8}``.
        `mode`: "vector" (the embeddings), "lexical" (BM25 over the text fields the index
        was built with; the query's own text) or "hybrid" (both arms over the same allowed
        rows, fused by `fusion` "rrf" with `rrf_k`, or "score": `alpha` * vector + (1 - alpha)
        * lexical, min-max normalised; `alpha` alone means "score"). See `query.hybrid`.
        """
        k, view = _check_k(k), self.view()
        plan = SearchMode(mode, fusion, alpha, rrf_k)
        queries, single = as_queries(query)
        filt, knobs, chain = self._parse(view, filter), self._knobs(view, params), self._chain(rerank)
        if not queries:
            return []
        xq = tokens = None
        if plan.needs_vectors or chain:  # lexical search alone needs no model
            encoder = self.encoder
            queries = with_instruction(queries, task, instruction, getattr(encoder, "task_instruction", None))
            xq, tokens = self._embed(encoder, queries)
        # a multi-vector index: FDE candidates, reranked by exact MaxSim before anything else
        late = MaxSim(knobs.candidates or view.manifest.multi_vector.candidates) if tokens is not None else None
        tombstones = view.store.tombstones()  # with `view`, the snapshot of this search and its rerankers
        ctx = self._rerank_context(view, tombstones, xq, queries, k, tokens) if chain or late else None
        if plan.mode == "vector":
            chain = ([late] if late else []) + chain
            D, I = self._search(view, xq, max([k] + [stage.candidates(k) for stage in chain]), filt, knobs,
                                tombstones)
            history = [("ann", D, I)]
        else:
            def vector_arm(width: int, lexical_rows: List[np.ndarray]):  # over the rows the lexical arm saw
                D, I = self._search(view, xq, late.candidates(width) if late else width, filt, knobs, tombstones)
                D, I = self._with_rows(view, xq, knobs, (D, I), lexical_rows)
                return late.rerank(ctx, D, I) if late else (D, I)  # multi-vector: in exact MaxSim order

            (D, I), history = plan.run(view, self._lexical, queries, max([k] + [s.candidates(k) for s in chain]),
                                       view.masks(filt, tombstones), vector_arm)
        for stage in chain:
            depth = stage.candidates(k)
            D, I = stage.rerank(ctx, D[:, :depth], I[:, :depth])
            history.append((stage.name, D, I))
        hits = self._hits(view, D[:, :k], I[:, :k], history)
        return hits[0] if single else hits

    @staticmethod
    def _embed(encoder, queries: List[Query]):
        """(query vectors, the token matrices of a multi-vector model's queries or None)."""
        if getattr(encoder, "multi_vector", False):
            return encoder.encode_requests_with_tokens(encoder.to_requests(queries))
        return encoder.encode(queries, show_progress=False), None  # Query objects: the query side

    def search_vectors(self, xq: np.ndarray, k: int, filter: Optional[Mapping[str, Any]] = None,
                       params: Union[None, SearchParams, Mapping[str, Any]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """faiss convention: float32 (n, d) in; D, I of shape (n, k) out, best first,
        I = global row ids, -1 (and the worst distance) where fewer than k rows qualify."""
        k, view = _check_k(k), self.view()
        xq = _check_xq(xq, view.manifest.model.dim)
        return self._search(view, xq, k, self._parse(view, filter), self._knobs(view, params))

    @staticmethod
    def _parse(view: IndexView, filter) -> Optional[Filter]:
        filt = parse_filter(filter)
        view.check_columns(filt)
        return filt

    @staticmethod
    def _knobs(view: IndexView, params) -> SearchParams:
        return view.defaults if params is None else SearchParams.coerce(params).over(view.defaults)

    def _search(self, view: IndexView, xq: np.ndarray, k: int, filt: Optional[Filter], knobs: SearchParams,
                tombstones: Optional[Tombstones] = None):
        n = len(xq)
        if not view.shards or n == 0:
            return pad_result(np.empty((n, 0), np.float32), np.empty((n, 0), np.int64), k, view.keep_max)
        return self._search_masked(view, xq, k, view.masks(filt, tombstones), knobs)

    def _search_masked(self, view: IndexView, xq: np.ndarray, k: int, masks: List, knobs: SearchParams):
        """The top k of each query among each shard's allowed rows (`masks`, None: all)."""
        keep_max = view.keep_max
        width = max(1, min(k, view.rows))
        joined = view.joined()
        if len(view.shards) == 1 or joined is not None:
            shard, mask = (view.shards[0], masks[0]) if joined is None else (joined, view.joined_mask(masks))
            D, I = search_shard(shard, xq, width, knobs, mask, self.policy)
            return pad_result(D, I, k, keep_max) if I.shape[1] < k else (D, I)

        parts = self._fanout.map(lambda i, q: search_shard(view.shards[i], q, width, knobs, masks[i], self.policy),
                                 len(view.shards), xq)
        D, I = merge_results(parts, width, keep_max)
        return pad_result(D, I, k, keep_max) if width < k else (D, I)

    def _with_rows(self, view: IndexView, xq: np.ndarray, knobs: SearchParams, found, rows: List[np.ndarray]):
        """`found` (D, I) extended, per query, by the given rows it lacks, with their own
        scores from the same index (a search allowed only those rows), in score order."""
        D, I = found
        extra = [np.setdiff1d(r[r >= 0], I[q]) for q, r in enumerate(rows)]
        width = I.shape[1] + max((len(e) for e in extra), default=0)
        if width == I.shape[1]:
            return D, I
        D, I = pad_result(D, I, width, view.keep_max)
        for q in np.flatnonzero([len(e) for e in extra]):
            d, i = self._search_masked(view, xq[q:q + 1], len(extra[q]), view.masks_of_rows(extra[q]), knobs)
            have = int((I[q] >= 0).sum())
            D[q, have:have + len(extra[q])], I[q, have:have + len(extra[q])] = d[0, :len(extra[q])], i[0, :len(extra[q])]
        return sort_result(D, I, view.keep_max)

    def _rerank_context(self, view: IndexView, tombstones: Tombstones, xq: np.ndarray, queries: List[Query],
                        k: int, query_tokens: Optional[List[np.ndarray]] = None) -> RerankContext:
        """What rerankers may look at: this snapshot (the view and the deletions the search
        saw) and what belongs to it; a search over it, not over whatever is current later."""
        def search(x: np.ndarray, depth: int) -> Tuple[np.ndarray, np.ndarray]:
            return self._search(view, _check_xq(x, view.dim), _check_k(depth), None, view.defaults, tombstones)

        def query_bank() -> QueryBank:
            return QueryBank(self.query_bank(), self.query_bank_info())

        return RerankContext(view, xq, queries, k, search=search, query_bank=query_bank, encoder=self.encoder,
                             tombstones=tombstones[0], query_tokens=query_tokens)

    def _chain(self, rerank: Any) -> list:
        return parse_rerank(rerank, self._named_reranker)

    def _named_reranker(self, name: str):
        with self._lock:  # one instance per index, so lazy state (hubs, a judge) is kept
            if name not in self._rerankers:
                self._rerankers[name] = make_reranker(name)
            return self._rerankers[name]

    def match_map(self, query: Any, item_id: str) -> Dict[str, Any]:
        """Multi-vector indexes: where on item `item_id`'s page `query` matched, as a heat map
        over the page's patch grid from the MaxSim argmax (`mmsearch.query.late.match_map`)."""
        view = self.view()
        if view.manifest.multi_vector is None:
            raise InputError(f"index {self.path} is not a multi-vector index: match maps need token vectors")
        (queries, _), rows = as_queries(query), view.live_rows_of([item_id])
        if rows[0] < 0:
            raise InputError(f"no item {item_id!r} in index {self.path}")
        return match_map(view, self.encoder, queries[0], int(rows[0]), view.records(rows)[0])

    # --- rows: metadata, vectors, images ---------------------------------------------------

    def records(self, rows: Sequence[int]) -> List[Dict[str, Any]]:
        """The meta.arrow row of each global row: {"id", "modality", "text", "image", ...}."""
        return self.view().records(rows)

    def vectors(self, rows: Sequence[int], exact: bool = True) -> np.ndarray:
        """float32 (len(rows), dim): the stored vectors of global rows (see `Shard.vectors`)."""
        return self.view().vectors(rows, exact=exact)

    def get(self, ids: Union[str, Sequence[str]]) -> List[Optional[Dict[str, Any]]]:
        """The records of item ids (None for ids unknown or deleted)."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        view = self.view()
        rows = view.live_rows_of(ids)
        out: List[Optional[dict]] = [None] * len(ids)
        live = np.flatnonzero(rows >= 0)
        for i, record in zip(live, view.records(rows[live])):
            out[i] = record
        return out

    def candidate_image(self, record: Mapping[str, Any], view: Optional[IndexView] = None):
        """The candidate's image (PIL) from its `image` reference, else its stored
        thumbnail, else None. Relative references resolve against the index folder,
        then ``manifest.extra["image_root"]``, then the working directory (see
        `IndexView.candidate_image`; `view`: that snapshot, default the current one)."""
        return (view or self.view()).candidate_image(record)

    def query_bank(self) -> np.ndarray:
        """``INDEX/query_bank.npy``: float32 (n, dim) embeddings of typical queries (same
        model, same query instruction as the searches), for the hubness reranker."""
        if self._bank is None:
            bank = load_query_bank(self.path, self.dim)
            if bank is None:
                raise InputError(f"hubness reranking needs a query bank: no {query_bank_paths(self.path)[0]}; "
                                 f"write one with `mmsearch "
                                 f"index query-bank {self.path} --queries FILE`, or pass "
                                 f"Hubness(bank=query_embeddings) (float32 (n, {self.dim}) embeddings of typical "
                                 f"queries)")
            self._bank_info, self._bank = self._read_bank_info(len(bank)), bank
        return self._bank

    def query_bank_info(self) -> Optional[dict]:
        """How the query bank was made (``INDEX/query_bank.json``: task, instruction, count,
        model), or None when that was not recorded (a bank written by hand)."""
        self.query_bank()
        return self._bank_info

    def _read_bank_info(self, rows: int) -> Optional[dict]:
        info = load_query_bank_info(self.path)
        if not isinstance(info, dict) or info.get("count") != rows:
            return None  # not the description of this bank (replaced by hand): provenance unknown
        return info

    def check_bank(self, bank: Any) -> np.ndarray:
        """`bank` as C-contiguous float32 (n, dim); InputError naming the shape otherwise."""
        return check_bank(bank, self.dim)

    # --- hits ------------------------------------------------------------------------------

    @staticmethod
    def _hits(view: IndexView, D: np.ndarray, I: np.ndarray, history) -> List[List[Hit]]:
        valid = I >= 0
        records = iter(view.records(I[valid]))
        stage_scores = [(name, [dict(zip(i.tolist(), d.tolist())) for d, i in zip(sd, si)])
                        for name, sd, si in history]
        which = view.shard_of(np.maximum(I, 0))
        out = []
        for q in range(len(I)):
            hits = []
            for j in np.flatnonzero(valid[q]):
                row, record = int(I[q, j]), dict(next(records))
                scores = {name: per_query[q][row] for name, per_query in stage_scores if row in per_query[q]}
                hits.append(Hit(id=record.pop("id"), score=float(D[q, j]), rank=len(hits) + 1, metadata=record,
                                row=row, shard=view.shards[which[q, j]].name, scores=scores))
            out.append(hits)
        return out

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        self._fanout.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_xq(xq: Any, dim: int) -> np.ndarray:
    x = np.asarray(xq)
    if x.ndim != 2 or x.shape[1] != dim or x.dtype.kind not in "fiu":
        hint = " (one query? pass xq[None, :])" if x.ndim == 1 else ""
        raise InputError(f"xq must be a numeric array of shape (n, {dim}), got {x.dtype} {x.shape}{hint}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k={k!r}: expected an int >= 1")
    return int(k)


def open_index(path: PathLike, encoder: Any = None, device: str = "auto", runtime: str = "torch",
               join_shards: bool = True) -> Index:
    """Open an index directory for search (read-only; see `Index`).

    `encoder`: None (load the manifest's model on first use), a loaded encoder, or a
    model id / checkpoint directory. One that does not match the model the index was
    built with raises IndexMismatchError naming both. `runtime="numpy"` embeds text-only
    queries without importing torch where the model allows (Qwen-family decoders on the
    CPU): a one-off search starts in a fraction of the time; torch loads for the first image.
    `join_shards`: IVF shards are searched as the one index they slice, copied into RAM on
    the first search (`mmsearch.query.joined`); False searches them one by one from their
    memory-mapped files.
    """
    return Index(path, encoder=encoder, device=device, runtime=runtime, join_shards=join_shards)


def search(index_path: PathLike, query: Any, k: int = 5, *, encoder: Any = None, device: str = "auto",
           runtime: str = "torch", **kwargs: Any) -> Union[List[Hit], List[List[Hit]]]:
    """One-shot: open the index, search, close. `kwargs` go to `Index.search`."""
    with open_index(index_path, encoder=encoder, device=device, runtime=runtime) as index:
        return index.search(query, k=k, **kwargs)
