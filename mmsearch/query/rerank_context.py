"""What a reranker may look at, and the helpers every rerank stage shares.

A `RerankContext` holds one snapshot of the index (the `IndexView` the candidates'
row ids refer to, with the deletions the search saw) and what belongs to it: its
stored vectors, metadata rows and candidate images, an ANN search over its own
shards, the index's query bank and encoder. Never the `Index`: a stage cannot reach
another version of the index, nor the query module's search machinery.

Kept apart from the stages (`mmsearch.query.rerank`, `mmsearch.query.vlm`) so they
import this module, not each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Protocol, Sequence, Tuple

import numpy as np

from mmsearch.errors import InputError
from mmsearch.types import Query

from .merge import worst_score

Result = Tuple[np.ndarray, np.ndarray]


class Snapshot(Protocol):
    """What a reranker reads of one index snapshot (an `IndexView`)."""

    dim: int
    keep_max: bool  # larger scores are better (inner product)

    def vectors(self, rows: Sequence[int], exact: bool = True) -> np.ndarray: ...

    def records(self, rows: Sequence[int]) -> List[Dict[str, Any]]: ...

    def candidate_image(self, record: Mapping[str, Any]) -> Any: ...

    def maxsim(self, query_tokens: np.ndarray, rows: Sequence[int]) -> np.ndarray: ...


class QueryBank(NamedTuple):
    """The index's query bank: float32 (n, dim) embeddings, and how they were made (or None)."""

    vectors: np.ndarray
    info: Optional[dict]


@dataclass(frozen=True)
class RerankContext:
    """What a reranker may look at besides the candidates: the snapshot they come from
    and what belongs to it, never the index itself.

    `search(xq, k) -> (D, I)`: ANN over the shards of `view` and the rows that were live
    for this search (no filter, the index's default knobs), never over a later version.
    """

    view: Snapshot                       # the snapshot the candidates' row ids refer to
    xq: np.ndarray                       # (n, d) query embeddings
    queries: Optional[Sequence[Query]]   # the queries themselves; None for search_vectors
    k: int
    search: Callable[[np.ndarray, int], Result]
    query_bank: Callable[[], QueryBank]  # the index's query bank (read on first use)
    encoder: Any = None                  # the index's query encoder: the vlm judge unless one is given
    tombstones: int = 0                  # version of the deletions the search saw (with `view`: the snapshot)
    query_tokens: Optional[Sequence[np.ndarray]] = None  # a multi-vector index's query token matrices

    def hubs(self, bank: np.ndarray, k: int) -> np.ndarray:
        """The activation set: sorted rows among the top-`k` results of some bank query in
        this snapshot."""
        _, top = self.search(bank, k)
        return np.unique(top[top >= 0])


def check_bank(bank: Any, dim: int) -> np.ndarray:
    """A query bank as C-contiguous float32 (n, dim); InputError naming the shape otherwise."""
    bank = np.asarray(bank)
    if bank.ndim != 2 or bank.shape[1] != dim or len(bank) == 0:
        raise InputError(f"query bank must be a non-empty (n, {dim}) array, got shape {bank.shape}")
    return np.ascontiguousarray(bank, dtype=np.float32)


def rerank_depth(k: int, factor: float, depth: Optional[int]) -> int:
    """Candidates a stage looks at: `depth` if set, else ceil(k * factor); never below k."""
    return max(k, depth if depth is not None else math.ceil(k * factor))


def check_depth(factor: float, depth: Optional[int]) -> None:
    """InputError unless `factor` >= 1 and `depth` is None or an int >= 1 (a stage's settings)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise InputError(f"reranker factor={factor!r}: expected a number >= 1")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise InputError(f"reranker depth={depth!r}: expected an int >= 1 (or None)")


def sort_result(scores: np.ndarray, I: np.ndarray, keep_max: bool) -> Result:
    """Rows re-sorted best first (stable: ties keep their previous order), -1 last."""
    scores = np.where(I >= 0, scores, worst_score(keep_max)).astype(np.float32)
    order = np.argsort(-scores if keep_max else scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(I, order, axis=1)
