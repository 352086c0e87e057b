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

A reranker sees one snapshot, never the `Index` (`RerankContext`, module
`mmsearch.query.rerank_context`); what a stage caches (the hub set) is kept per snapshot.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from mmsearch.errors import InputError
from mmsearch.types import Query

from .merge import worst_score
from .rerank_context import (QueryBank, RerankContext, Result, Snapshot, check_bank, check_depth, rerank_depth,
                             sort_result)

__all__ = ["RERANKERS", "Hubness", "QueryBank", "Refine", "RerankContext", "Result", "Snapshot", "candidate_scores",
           "check_bank", "check_depth", "make_reranker", "parse_rerank", "rerank_depth", "sort_result"]

_LOGZ_BLOCK = 4096  # candidates per block of the bank-similarity matrix


def candidate_scores(ctx: RerankContext, I: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The metric between each query and its valid candidates, from their vectors
    (rows of `vectors` follow ``I[I >= 0]``); -1 slots get the worst score."""
    valid = I >= 0
    qx = ctx.xq[np.nonzero(valid)[0]]
    if ctx.view.keep_max:
        values = np.einsum("ij,ij->i", qx, vectors)
    else:
        values = np.einsum("ij,ij->i", qx - vectors, qx - vectors)
    out = np.full(I.shape, worst_score(ctx.view.keep_max), dtype=np.float32)
    out[valid] = values
    return out


@dataclass(frozen=True)
class Refine:
    """Exact rescoring of the top ``k * factor`` (or `depth`) candidates."""

    factor: float = 4.0
    depth: Optional[int] = None
    name = "refine"

    def __post_init__(self) -> None:
        check_depth(self.factor, self.depth)

    def candidates(self, k: int) -> int:
        return rerank_depth(k, self.factor, self.depth)

    def rerank(self, ctx: RerankContext, D: np.ndarray, I: np.ndarray) -> Result:
        vectors = ctx.view.vectors(I[I >= 0], exact=True)
        return sort_result(candidate_scores(ctx, I, vectors), I, ctx.view.keep_max)


@dataclass(frozen=True)
class Hubness:
    """Query-bank normalisation of the top ``k * factor`` candidates.

    With similarities s and a bank B of query embeddings, a candidate c's inverted
    softmax score is ``beta * s(q, c) - log sum_b exp(beta * s(b, c))`` (the log of
    QB-Norm's ``exp(beta s) / Z_c``): hubs, close to many bank queries, fall. ``"dis"``
    normalises a query's candidates only when its nearest candidate is in the
    activation set (the top-`activation_k` results of the bank queries over the whole
    index) and otherwise keeps the plain similarities. Inner-product indexes only.

    The activation set is computed once per snapshot (the view and the deletions the
    search saw), over that snapshot's shards: the one its candidates come from.
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
        check_depth(self.factor, self.depth)
        if self.method not in self.METHODS:
            raise InputError(f"hubness method={self.method!r}: expected one of {list(self.METHODS)}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or self.beta <= 0:
            raise InputError(f"hubness beta={self.beta!r}: expected a number > 0")
        if isinstance(self.activation_k, bool) or not isinstance(self.activation_k, int) or self.activation_k < 1:
            raise InputError(f"hubness activation_k={self.activation_k!r}: expected an int >= 1")

    def candidates(self, k: int) -> int:
        return rerank_depth(k, self.factor, self.depth)

    def rerank(self, ctx: RerankContext, D: np.ndarray, I: np.ndarray) -> Result:
        if not ctx.view.keep_max:
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

    def hubs(self, ctx: RerankContext) -> np.ndarray:
        """The activation set ``"dis"`` uses for the snapshot of `ctx` (empty for ``"is"``)."""
        return self._state(ctx)[1]

    def _state(self, ctx: RerankContext) -> Tuple[np.ndarray, np.ndarray, Optional[dict]]:
        """(bank, activation set, how the bank was made or None) for the snapshot of
        `ctx`, computed once from that snapshot (the latest deletions' version is kept)."""
        with self._lock:
            tombstones, state = self._cache.get(ctx.view, (None, None))
            if state is None or tombstones != ctx.tombstones:
                bank = ctx.query_bank() if self.bank is None else QueryBank(check_bank(self.bank, ctx.view.dim), None)
                hubs = ctx.hubs(bank.vectors, self.activation_k) if self.method == "dis" else np.empty(0, np.int64)
                state = (bank.vectors, hubs, bank.info)
                self._cache[ctx.view] = (ctx.tombstones, state)
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
