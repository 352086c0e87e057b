"""Rerankers: a second look at the top candidates of the ANN search, chainable.

``index.search(q, k, rerank="refine")``, ``rerank=["refine", "hubness"]`` or
configured objects (``rerank=[Refine(factor=8), VLMReranker("Qwen/Qwen2-VL-2B-Instruct")]``).
Each stage receives the best ``stage.candidates(k)`` candidates of the previous one as a
faiss pair (D, I) and returns them rescored and re-sorted; the search keeps the top k.

- `Refine`: exact rescoring from the stored full vectors (vectors.npy). On a PQ/SQ
  index it recovers the exact order of the candidates it sees.
- `Hubness`: query-bank normalisation against hubs (candidates that are the nearest
  neighbour of many queries), as inverted softmax (``method="is"``, Smith et al.
  2017) or dynamic inverted softmax (``"dis"``, QB-Norm, Bogolin et al. 2022), in
  the spirit of "Balance Act" (Wang et al. 2023). The query bank is given as
  ``Hubness(bank=...)`` or read from ``INDEX/query_bank.npy``.
- `VLMReranker` (module `mmsearch.query.vlm`): a vision-language model judges
  each (query, candidate) pair.

``INDEX/query_bank.npy`` (optional): a float32 ``(n, dim)`` array, ``np.save`` format,
of L2-normalised embeddings of typical queries, made with the index's model and the
query instruction searches will use (held-out queries or captions of the corpus's
domain; n of 1k-10k is plenty). The indexer writes it with ``build_index(...,
query_bank=FILE)`` or ``mmsearch index query-bank INDEX --queries FILE --task T``
(`mmsearch.indexer.query_bank`), together with ``query_bank.json`` recording the task
and instruction it was made with; a search with another query instruction then gets
a warning. Neither file is listed in the manifest; they are read once per open index.
"""
from __future__ import annotations

import math
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple

import numpy as np

from mmsearch.errors import InputError
from mmsearch.types import Query

from .merge import worst_score

if TYPE_CHECKING:  # pragma: no cover
    from .index import Index
    from .view import IndexView

Result = Tuple[np.ndarray, np.ndarray]
_LOGZ_BLOCK = 4096  # candidates per block of the bank-similarity matrix


@dataclass(frozen=True)
class RerankContext:
    """What a reranker may look at besides the candidates."""

    index: "Index"
    view: "IndexView"                    # the snapshot the candidates' row ids refer to
    xq: np.ndarray                       # (n, d) query embeddings
    queries: Optional[Sequence[Query]]   # the queries themselves; None for search_vectors
    k: int


def rerank_depth(k: int, factor: float, depth: Optional[int]) -> int:
    """Candidates a stage looks at: `depth` if set, else ceil(k * factor); never below k."""
    return max(k, depth if depth is not None else math.ceil(k * factor))


def _check_depth(factor: float, depth: Optional[int]) -> None:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise InputError(f"reranker factor={factor!r}: expected a number >= 1")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise InputError(f"reranker depth={depth!r}: expected an int >= 1 (or None)")


def sort_result(scores: np.ndarray, I: np.ndarray, keep_max: bool) -> Result:
    """Rows re-sorted best first (stable: ties keep their previous order), -1 last."""
    scores = np.where(I >= 0, scores, worst_score(keep_max)).astype(np.float32)
    order = np.argsort(-scores if keep_max else scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(I, order, axis=1)


def candidate_scores(ctx: RerankContext, I: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The metric between each query and its valid candidates, from their vectors
    (rows of `vectors` follow ``I[I >= 0]``); -1 slots get the worst score."""
    valid = I >= 0
    qx = ctx.xq[np.nonzero(valid)[0]]
    if ctx.index.keep_max:
        values = np.einsum("ij,ij->i", qx, vectors)
    else:
        values = np.einsum("ij,ij->i", qx - vectors, qx - vectors)
    out = np.full(I.shape, worst_score(ctx.index.keep_max), dtype=np.float32)
    out[valid] = values
    return out


@dataclass(frozen=True)
class Refine:
    """Exact rescoring of the top ``k * factor`` (or `depth`) candidates."""

    factor: float = 4.0
    depth: Optional[int] = None
    name = "refine"

    def __post_init__(self) -> None:
        _check_depth(self.factor, self.depth)

    def candidates(self, k: int) -> int:
        return rerank_depth(k, self.factor, self.depth)

    def rerank(self, ctx: RerankContext, D: np.ndarray, I: np.ndarray) -> Result:
        vectors = ctx.view.vectors(I[I >= 0], exact=True)
        return sort_result(candidate_scores(ctx, I, vectors), I, ctx.index.keep_max)


@dataclass(frozen=True)
class Hubness:
    """Query-bank normalisation of the top ``k * factor`` candidates.

    With similarities s and a bank B of query embeddings, a candidate c's inverted
    softmax score is ``beta * s(q, c) - log sum_b exp(beta * s(b, c))`` (the log of
    QB-Norm's ``exp(beta s) / Z_c``): hubs, close to many bank queries, fall. ``"dis"``
    normalises a query's candidates only when its nearest candidate is in the
    activation set (the top-`activation_k` results of the bank queries over the whole
    index) and otherwise keeps the plain similarities. Inner-product indexes only.
    """

    bank: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    beta: float = 20.0
    method: str = "dis"
    activation_k: int = 1
    factor: float = 4.0
    depth: Optional[int] = None
    _cache: Any = field(default_factory=weakref.WeakKeyDictionary, init=False, compare=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, compare=False, repr=False)
    name = "hubness"
    METHODS = ("dis", "is")

    def __post_init__(self) -> None:
        _check_depth(self.factor, self.depth)
        if self.method not in self.METHODS:
            raise InputError(f"hubness method={self.method!r}: expected one of {list(self.METHODS)}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or self.beta <= 0:
            raise InputError(f"hubness beta={self.beta!r}: expected a number > 0")
        if isinstance(self.activation_k, bool) or not isinstance(self.activation_k, int) or self.activation_k < 1:
            raise InputError(f"hubness activation_k={self.activation_k!r}: expected an int >= 1")

    def candidates(self, k: int) -> int:
        return rerank_depth(k, self.factor, self.depth)

    def rerank(self, ctx: RerankContext, D: np.ndarray, I: np.ndarray) -> Result:
        index = ctx.index
        if not index.keep_max:
            raise InputError("the hubness reranker needs an inner-product index; this one uses l2")
        bank, hubs, made_with = self._state(ctx)
        _warn_other_instruction(ctx.queries, made_with)
        rows, inverse = np.unique(I[I >= 0], return_inverse=True)
        vectors = ctx.view.vectors(rows, exact=True)
        log_z = _bank_log_partition(bank, vectors, self.beta)
        sims = candidate_scores(ctx, I, vectors[inverse])
        normalised = np.full(I.shape, worst_score(True), dtype=np.float64)
        normalised[I >= 0] = self.beta * sims[I >= 0] - log_z[inverse]
        if self.method == "dis":
            apply = np.isin(I[:, 0], hubs) & (I[:, 0] >= 0)
            normalised = np.where(apply[:, None], normalised, sims)
        return sort_result(normalised, I, keep_max=True)

    def _state(self, ctx: RerankContext) -> Tuple[np.ndarray, np.ndarray, Optional[dict]]:
        """(bank, activation set, how the bank was made or None) for the index version
        of `ctx`, computed once."""
        index = ctx.index
        with self._lock:
            state = self._cache.get(ctx.view)
            if state is None:
                bank = index.query_bank() if self.bank is None else index.check_bank(self.bank)
                made_with = index.query_bank_info() if self.bank is None else None
                hubs = np.empty(0, dtype=np.int64)
                if self.method == "dis":
                    _, top = index.search_vectors(bank, self.activation_k)
                    hubs = np.unique(top[top >= 0])
                state = self._cache[ctx.view] = (bank, hubs, made_with)
        return state


def _warn_other_instruction(queries: Optional[Sequence[Query]], made_with: Optional[dict]) -> None:
    """A bank embedded with another query instruction sits elsewhere in the space than
    these queries, so its normalisation is off: say so (the scores are still returned)."""
    if queries is None or made_with is None or "instruction" not in made_with:
        return
    other = sorted({q.instruction or "" for q in queries} - {made_with["instruction"] or ""})
    if other:
        task = f" (task {made_with['task']!r})" if made_with.get("task") else ""
        warnings.warn(f"the index's query bank was made with query instruction {made_with['instruction']!r}{task}, "
                      f"this search uses {other[0]!r}; hubness scores assume the same instruction: rewrite the bank "
                      f"with `mmsearch index query-bank INDEX --queries FILE --task ...` or pass Hubness(bank=...)",
                      UserWarning, stacklevel=4)


def _bank_log_partition(bank: np.ndarray, vectors: np.ndarray, beta: float) -> np.ndarray:
    """log sum_b exp(beta * <b, v>) for each row v, blockwise and overflow-safe."""
    out = np.empty(len(vectors), dtype=np.float64)
    for start in range(0, len(vectors), _LOGZ_BLOCK):
        logits = beta * (bank @ vectors[start:start + _LOGZ_BLOCK].T).astype(np.float64)
        top = logits.max(axis=0)
        out[start:start + _LOGZ_BLOCK] = top + np.log(np.exp(logits - top).sum(axis=0))
    return out


RERANKERS = ("refine", "hubness", "vlm")


def make_reranker(name: str):
    """A reranker with default settings, by name."""
    if name == "refine":
        return Refine()
    if name == "hubness":
        return Hubness()
    if name == "vlm":
        from .vlm import VLMReranker  # the judge's torch code loads only when used

        return VLMReranker()
    raise InputError(f"unknown reranker {name!r}; valid: {list(RERANKERS)} (or reranker objects)")


def parse_rerank(spec: Any, named=make_reranker) -> list:
    """The chain of a `rerank=` argument: None, a name, "a,b", or a list of names and
    reranker objects (anything with ``candidates(k)`` and ``rerank(ctx, D, I)``)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = [part for part in spec.split(",") if part.strip()]
    elif not isinstance(spec, (list, tuple)):
        spec = [spec]
    chain = []
    for item in spec:
        if isinstance(item, str):
            name = item.strip().lower()
            if name not in RERANKERS:
                raise InputError(f"unknown reranker {item!r}; valid: {list(RERANKERS)} (or reranker objects)")
            chain.append(named(name))
        elif callable(getattr(item, "rerank", None)) and callable(getattr(item, "candidates", None)):
            chain.append(item)
        else:
            raise InputError(f"rerank entry {item!r}: expected a name {list(RERANKERS)} or a reranker object")
    return chain
