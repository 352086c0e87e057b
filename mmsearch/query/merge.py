"""Per-shard results, searched in parallel threads and merged with a top-k heap.

Every result is a faiss pair (D, I) of shape (n, k): rows sorted best first,
I holding global row ids, -1 (with faiss's worst distance) where missing.
"""
from __future__ import annotations

from concurrent.futures import Executor, wait
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import faiss
import numpy as np

Result = Tuple[np.ndarray, np.ndarray]
T = TypeVar("T")
S = TypeVar("S")

_FLT_MAX = float(np.finfo(np.float32).max)


def worst_score(keep_max: bool) -> float:
    """The distance faiss reports beside a missing (-1) label."""
    return -_FLT_MAX if keep_max else _FLT_MAX


def empty_result(n: int, k: int, keep_max: bool) -> Result:
    return (np.full((n, k), worst_score(keep_max), dtype=np.float32), np.full((n, k), -1, dtype=np.int64))


def pad_result(D: np.ndarray, I: np.ndarray, k: int, keep_max: bool) -> Result:
    """(D, I) cut or padded with missing entries to exactly k columns."""
    n, width = I.shape
    if width >= k:
        return np.ascontiguousarray(D[:, :k], dtype=np.float32), np.ascontiguousarray(I[:, :k], dtype=np.int64)
    outD, outI = empty_result(n, k, keep_max)
    outD[:, :width], outI[:, :width] = D, I
    return outD, outI


def merge_results(parts: Sequence[Result], k: int, keep_max: bool) -> Result:
    """The top k of several sorted results over the same queries (faiss's heap merge)."""
    if len(parts) == 1:
        return pad_result(*parts[0], k, keep_max)
    padded = [pad_result(D, I, k, keep_max) for D, I in parts]
    Dall = np.ascontiguousarray(np.stack([D for D, _ in padded]))
    Iall = np.ascontiguousarray(np.stack([I for _, I in padded]))
    return faiss.merge_knn_results(Dall, Iall, keep_max=keep_max)


class CostModel:
    """A running estimate (EWMA) of the seconds one shard search costs per query, to
    choose between the thread pool and a plain loop: handing a shard to a pool
    thread costs tens of microseconds, more than a whole HNSW or IVF search of one
    query. Updated without a lock: a lost update only delays the estimate."""

    def __init__(self, threshold: float = 3e-4, alpha: float = 0.2):
        self.threshold, self.alpha = threshold, alpha
        self.per_query: Optional[float] = None  # unknown: use threads and measure

    def observe(self, seconds: float, n: int) -> None:
        value = seconds / max(n, 1)
        old = self.per_query
        self.per_query = value if old is None else old + self.alpha * (value - old)

    def use_threads(self, n: int, shards: int) -> bool:
        """Whether the sequential work (n queries on every shard) exceeds the threshold."""
        return self.per_query is None or self.per_query * n * shards > self.threshold


def map_shards(executor: Optional[Executor], fn: Callable[[S], T], shards: Sequence[S]) -> List[T]:
    """[fn(s) for s in shards], the shards in parallel when an executor is given.
    The calling thread searches the first shard itself (one hand-off fewer)."""
    if executor is None or len(shards) < 2:
        return [fn(s) for s in shards]
    futures = [executor.submit(fn, s) for s in shards[1:]]
    try:
        first = fn(shards[0])
    finally:
        wait(futures)  # never leave work running on behalf of a failed call
    return [first] + [f.result() for f in futures]
