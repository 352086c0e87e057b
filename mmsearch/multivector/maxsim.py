"""Exact MaxSim (late interaction, ColBERT/ColPali scoring) over token vectors stored flat.

score(q, d) = sum over query tokens of the max over d's tokens of the inner product. Pages
are scored a block at a time: their token rows are concatenated, multiplied by the query's
tokens in one matmul, and `np.maximum.reduceat` over the row offsets takes each page's max;
no Python loop per page or per token.

Speed (profiled on 2 shared cores, 1,000 candidate pages of ~750 tokens per query): the
old path gathered every candidate row at once (~750k rows), converted float16 -> float32 with
`astype` (numpy's scalar half conversion, ~0.5 G values/s: 60% of the time) and ran one thin
matmul from RAM. Now rows go through a small float32 buffer (`_BLOCK_ROWS`, cache-sized), the
half -> float conversion is an exact bit manipulation (2.5x faster than `astype`), and the
thin per-query matmuls run on one BLAS thread (a multi-threaded OpenBLAS call on a 4096 x 128
block spends more on waking and syncing threads than on the product, 10x slower on a busy
machine); brute force, whose all-queries matmuls are big, keeps BLAS's threads.

Never pad token sets with zero vectors to batch them (colpali_engine's `score_multi_vector`
does): a zero row scores 0, which beats every real token when all of a query token's
similarities are negative, so the padded score is wrong. Segments here are exact.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from threadpoolctl import ThreadpoolController

from .sets import check_sets

# Cells of the float32 similarity block (rows x query tokens) per step: ~64 MB.
_BLOCK_CELLS = 1 << 24
# Rows dequantized and multiplied at a time when a query's tokens are few (rerank): the
# float32 block (2 MB at d = 128) is still in cache when the matmul reads it.
_BLOCK_ROWS = 4096
_STORAGE = ("float16", "float32", "int8")
_HALF_TO_FLOAT = np.float32(2.0 ** 112)  # float32 exponent bias 127 - float16 bias 15


def to_float32(values: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Stored rows (float16 / float32 / int8 codes) as float32, exactly. float16 goes through
    its bits (numpy's own half cast is scalar and ~2.5x slower): the magnitude bits shifted
    into a float32's place are the value times 2^-112, subnormals included, so one multiply
    by 2^112 restores it, and the sign bit is or-ed back. (Inf/NaN halves would come out
    finite; token vectors never hold them.)"""
    if out is None:
        out = np.empty(values.shape, np.float32)
    if values.dtype != np.float16:
        np.copyto(out, values, casting="unsafe")
        return out
    half, bits = values.view(np.uint16), out.view(np.uint32)
    np.bitwise_and(half, 0x7FFF, out=bits, casting="unsafe")
    np.left_shift(bits, 13, out=bits)
    np.multiply(out, _HALF_TO_FLOAT, out=out)
    sign = np.bitwise_and(half, 0x8000).astype(np.uint32)
    np.left_shift(sign, 16, out=sign)
    np.bitwise_or(bits, sign, out=bits)
    return out


_CONTROLLER = ThreadpoolController()  # caps OpenBLAS/MKL threads for the thin per-query matmuls
_LIMIT_LOCK = threading.Lock()
_LIMIT = {"users": 0, "limiter": None}


@contextmanager
def _one_blas_thread():
    """BLAS on one thread while any caller is inside. The limit is process-wide, so it is
    counted: the first caller in sets it, the last one out restores it (nested contexts from
    several threads would otherwise restore each other's state and could leave it at 1)."""
    with _LIMIT_LOCK:
        if _LIMIT["users"] == 0:
            _LIMIT["limiter"] = _CONTROLLER.limit(limits=1, user_api="blas")
        _LIMIT["users"] += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT["users"] -= 1
            if _LIMIT["users"] == 0:
                _LIMIT["limiter"].restore_original_limits()
                _LIMIT["limiter"] = None


def map_queries(fn: Callable[[int], None], n: int) -> None:
    """fn(0), ..., fn(n - 1) spread over the cores this process may use, BLAS on one thread
    each: a query's MaxSim is thin matmuls, gathers and reductions that release the GIL, so
    queries run side by side (2x on 2 cores) where one query cannot use two cores well."""
    workers = min(n, len(os.sched_getaffinity(0)))
    with _one_blas_thread():
        if workers <= 1:
            for i in range(n):
                fn(i)
            return
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fn, range(n)))


def quantize_tokens(tokens: np.ndarray, storage: str = "float16") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(values, scales) of float token vectors `(T, d)` stored as `storage`: float16 / float32
    as they are (scales None), or int8 codes with one symmetric scale per token (max |x| / 127,
    1 for a zero row): tokens are unit vectors, so a per-token scale keeps each one's precision."""
    if storage not in _STORAGE:
        raise ValueError(f"storage must be one of {_STORAGE}, got {storage!r}")
    tokens = np.asarray(tokens, dtype=np.float32)
    if storage != "int8":
        return tokens.astype(storage), None
    peak = np.abs(tokens).max(axis=1) if len(tokens) else np.zeros(0, np.float32)
    scales = np.where(peak > 0, peak / 127, 1).astype(np.float32)
    return np.rint(tokens / scales[:, None]).clip(-127, 127).astype(np.int8), scales


@dataclass(frozen=True)
class TokenStore:
    """Every page's token vectors as one `(N, d)` matrix plus `n + 1` row offsets.
    float16 / float32 rows are used as they are; int8 rows carry a per-token `scales`
    (row = int8 * scale), which multiplies the similarity column instead of the rows."""

    tokens: np.ndarray
    offsets: np.ndarray
    scales: Optional[np.ndarray] = None

    def __post_init__(self):
        object.__setattr__(self, "offsets", check_sets(self.tokens, self.offsets))
        if self.tokens.dtype.name not in _STORAGE:
            raise ValueError(f"token dtype must be one of {_STORAGE}, got {self.tokens.dtype}")
        if (self.tokens.dtype == np.int8) != (self.scales is not None):
            raise ValueError("int8 tokens need scales (one per token); float tokens take none")
        if self.scales is not None and self.scales.shape != (len(self.tokens),):
            raise ValueError(f"scales must have shape ({len(self.tokens)},), got {self.scales.shape}")

    @classmethod
    def from_float(cls, tokens: np.ndarray, offsets: np.ndarray, storage: str = "float16") -> "TokenStore":
        """Store float vectors as float16, float32, or int8 with a symmetric per-token scale."""
        values, scales = quantize_tokens(tokens, storage)
        return cls(values, offsets, scales)

    @property
    def n_sets(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes of token storage (tokens + scales; offsets not counted)."""
        return self.tokens.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def segment_max(self, rows, starts: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """For the token rows `rows` (a slice or an index array) grouped into segments that
        begin at `starts`: the max similarity of each segment with each query token,
        `(len(starts), len(queries))`."""
        sim = to_float32(self.tokens[rows]) @ queries.T
        if self.scales is not None:
            sim *= self.scales[rows][:, None]
        return np.maximum.reduceat(sim, starts, axis=0)


def maxsim_scores(query: np.ndarray, store: TokenStore, candidates) -> np.ndarray:
    """Exact MaxSim of one query's tokens `(m, d)` with each candidate page (ids into the
    store, any order, repeats allowed) -> float32 `(len(candidates),)`."""
    query = _as_query(query, store)
    cand = np.asarray(candidates, dtype=np.int64).ravel()
    if cand.size and (cand.min() < 0 or cand.max() >= store.n_sets):
        raise ValueError(f"candidate ids must be in [0, {store.n_sets}), got {cand.min()}..{cand.max()}")
    with _one_blas_thread():
        return _scores(query, store, cand)


def _scores(query: np.ndarray, store: TokenStore, cand: np.ndarray) -> np.ndarray:
    lengths = store.offsets[cand + 1] - store.offsets[cand]
    scores = np.empty(len(cand), dtype=np.float32)
    queries_t = np.ascontiguousarray(query.T)
    max_rows = max(1, min(_BLOCK_ROWS, _BLOCK_CELLS // len(query)))
    buf = np.empty((min(int(lengths.sum()), max_rows), store.tokens.shape[1]), np.float32)
    for lo, hi in _blocks(lengths, max_rows):
        ln = lengths[lo:hi]
        starts = np.zeros(len(ln), dtype=np.int64)
        np.cumsum(ln[:-1], out=starts[1:])
        n_rows = int(starts[-1] + ln[-1])
        # row ids of the candidates' tokens, concatenated: arange shifted per segment
        rows = np.arange(n_rows) + np.repeat(store.offsets[cand[lo:hi]] - starts, ln)
        block = buf[:n_rows] if n_rows <= len(buf) else np.empty((n_rows, buf.shape[1]), np.float32)
        sim = to_float32(store.tokens[rows], block) @ queries_t
        if store.scales is not None:
            sim *= store.scales[rows][:, None]
        scores[lo:hi] = np.maximum.reduceat(sim, starts, axis=0).sum(axis=1)
    return scores


def exhaustive_search(query_tokens: np.ndarray, query_offsets: np.ndarray, store: TokenStore,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force MaxSim top-k of every query (`query_tokens[query_offsets[i]:...]`) over
    every page: all queries' tokens go through one matmul per block of pages.
    Returns faiss-style `(D, I)`, each `(n_queries, k)`, -1 where fewer than k pages."""
    queries = _as_query(query_tokens, store)
    qoff = check_sets(queries, query_offsets)
    scores = np.empty((len(qoff) - 1, store.n_sets), dtype=np.float32)
    lengths = np.diff(store.offsets)
    for lo, hi in _blocks(lengths, max(1, _BLOCK_CELLS // len(queries))):
        rows = slice(store.offsets[lo], store.offsets[hi])
        seg = store.segment_max(rows, store.offsets[lo:hi] - store.offsets[lo], queries)
        scores[:, lo:hi] = np.add.reduceat(seg, qoff[:-1], axis=1).T  # sum per query
    return _top_k(scores, np.broadcast_to(np.arange(store.n_sets), scores.shape), k)


def rerank(query_tokens: np.ndarray, query_offsets: np.ndarray, store: TokenStore,
           candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim rerank of each query's candidate row (`(n_queries, c)` page ids, -1 =
    none, e.g. a FAISS search over FDEs) -> `(D, I)` of the best k, -1 where missing."""
    queries = _as_query(query_tokens, store)
    qoff = check_sets(queries, query_offsets)
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2 or len(candidates) != len(qoff) - 1:
        raise ValueError(f"candidates must be (n_queries={len(qoff) - 1}, c), got {candidates.shape}")
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    if candidates.size and candidates.max() >= store.n_sets:
        raise ValueError(f"candidate ids must be < {store.n_sets}, got {candidates.max()}")
    def score(i: int) -> None:
        valid = candidates[i] >= 0
        if valid.any():
            scores[i, valid] = _scores(queries[qoff[i]:qoff[i + 1]], store, candidates[i][valid])

    map_queries(score, len(candidates))
    return _top_k(scores, np.where(candidates >= 0, candidates, -1), k)


def _as_query(query, store: TokenStore) -> np.ndarray:
    query = np.ascontiguousarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != store.tokens.shape[1] or len(query) == 0:
        raise ValueError(f"query tokens must be (m >= 1, {store.tokens.shape[1]}), got {query.shape}")
    return query


def _blocks(lengths: np.ndarray, max_rows: int):
    """(lo, hi) ranges of consecutive sets holding <= max_rows rows (at least one set each)."""
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(lengths):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + max_rows, "right")))
        yield lo, hi
        lo = hi


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row, best first; -inf scores count as missing (-1, -inf)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = scores.shape[1]
    kk = min(k, n)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(scores), 1))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    pos = np.take_along_axis(part, order, axis=1)
    D = np.full((len(scores), k), -np.inf, dtype=np.float32)
    I = np.full((len(scores), k), -1, dtype=np.int64)
    D[:, :kk] = np.take_along_axis(scores, pos, axis=1)
    I[:, :kk] = np.where(np.isfinite(D[:, :kk]), np.take_along_axis(ids, pos, axis=1), -1)
    return D, I
