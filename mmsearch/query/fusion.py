"""Fusing ranked lists (the vector and lexical arms of a hybrid search) into one.

Each arm is a faiss pair (D, I) of shape (n, depth), best first, -1 where missing.

- ``rrf``: reciprocal rank fusion (Cormack et al., SIGIR 2009): a row scores
  ``sum over arms of 1 / (k + rank)``, rank 1-based; rank-only, so it needs no score
  calibration between BM25 and cosine. k (default 60) damps the weight of the top ranks.
- ``score``: each arm's scores min-max normalised per query over the rows it returned,
  then ``alpha * vector + (1 - alpha) * lexical`` (a row an arm did not return adds 0):
  alpha = 1 is pure vector, 0 pure lexical (Weaviate's convention).

Both are ranx's definitions (`ranx.fuse` with method "rrf" / norm "min-max" and method
"wsum", including its 1e-9 floor on the min-max range); tests hold them to ranx.
Ties are broken by the lower row, so the result is deterministic.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from mmsearch.errors import InputError

from .merge import empty_result

FUSIONS = ("rrf", "score")
RRF_K = 60
_MIN_RANGE = 1e-9  # ranx's floor on max - min


def check_fusion(fusion: str, alpha: float, rrf_k: float) -> None:
    if fusion not in FUSIONS:
        raise InputError(f"fusion={fusion!r}: expected one of {list(FUSIONS)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha!r}: expected a weight in [0, 1] (1: vector only, 0: lexical only)")
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or rrf_k < 0:
        raise InputError(f"rrf_k={rrf_k!r}: expected a number >= 0 (60 is usual)")


def rrf_scores(arm: Tuple[np.ndarray, np.ndarray], k: float) -> np.ndarray:
    """1 / (k + rank) for each valid entry of one arm, 0 where missing."""
    _, I = arm
    ranks = np.arange(1, I.shape[1] + 1, dtype=np.float64)
    return np.where(I >= 0, 1.0 / (k + ranks), 0.0)


def minmax_scores(arm: Tuple[np.ndarray, np.ndarray], keep_max: bool = True) -> np.ndarray:
    """Per query, (s - min) / max(max - min, 1e-9) over the valid entries; 0 where missing.
    `keep_max=False` (l2 distances, lower is better) flips the scale first."""
    D, I = arm
    s = np.asarray(D, dtype=np.float64) * (1.0 if keep_max else -1.0)
    valid = I >= 0
    lo = np.where(valid, s, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, s, -np.inf).max(axis=1, keepdims=True)
    span = np.maximum(hi - lo, _MIN_RANGE)
    return np.where(valid, (s - np.where(valid.any(axis=1, keepdims=True), lo, 0.0)) / span, 0.0)


def fuse(arms: Sequence[Tuple[np.ndarray, np.ndarray]], weights: Sequence[float], k: int,
         contributions: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Sum each row's weighted contributions over the arms; top k per query as (D, I)."""
    n = len(arms[0][1])
    D, I = empty_result(n, k, keep_max=True)
    for q in range(n):
        rows = np.concatenate([arm[1][q] for arm in arms])
        gains = np.concatenate([w * c[q] for w, c in zip(weights, contributions)])
        valid = rows >= 0
        uniq, inverse = np.unique(rows[valid], return_inverse=True)
        total = np.zeros(len(uniq))
        np.add.at(total, inverse, gains[valid])
        best = np.lexsort((uniq, -total))[:k]
        D[q, :len(best)], I[q, :len(best)] = total[best], uniq[best]
    return D, I


def rrf(arms: Sequence[Tuple[np.ndarray, np.ndarray]], k: int, rrf_k: float = RRF_K):
    """Reciprocal rank fusion of the arms; (D, I) with D the fused scores."""
    return fuse(arms, [1.0] * len(arms), k, [rrf_scores(a, rrf_k) for a in arms])


def score_fusion(vector: Tuple[np.ndarray, np.ndarray], lexical: Tuple[np.ndarray, np.ndarray], k: int,
                 alpha: float = 0.5, keep_max: bool = True):
    """alpha * minmax(vector) + (1 - alpha) * minmax(lexical); (D, I) with D the fused scores."""
    return fuse([vector, lexical], [alpha, 1.0 - alpha], k,
                [minmax_scores(vector, keep_max), minmax_scores(lexical)])
