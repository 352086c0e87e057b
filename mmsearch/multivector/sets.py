"""Sets of token vectors stored flat: one `(N, d)` matrix and `n + 1` row offsets, set `i`
being rows `offsets[i]:offsets[i + 1]`. One layout for encoding, storing and scoring, so no
per-set Python objects and no padding."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def flatten_sets(sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A list of `(n_i, d)` arrays -> (tokens `(sum n_i, d)`, offsets `(len + 1,)` int64)."""
    if len(sets) == 0:
        raise ValueError("flatten_sets needs at least one set of vectors")
    lengths = [len(s) for s in sets]
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.concatenate([np.asarray(s) for s in sets], axis=0), offsets


def check_sets(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Validate the flat layout (2-D tokens, offsets from 0 to N, every set non-empty) and
    return the offsets as int64."""
    offsets = np.asarray(offsets)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be a 2-D (N, d) array, got shape {tokens.shape}")
    if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"offsets must be a 1-D integer array of n + 1 >= 2 entries, got {offsets!r}")
    if offsets[0] != 0 or offsets[-1] != len(tokens):
        raise ValueError(f"offsets must run from 0 to len(tokens)={len(tokens)}, "
                         f"got {offsets[0]}..{offsets[-1]}")
    if np.any(np.diff(offsets) <= 0):
        empty = np.flatnonzero(np.diff(offsets) <= 0)[:5].tolist()
        raise ValueError(f"every set needs at least one vector; sets {empty} have none")
    return offsets.astype(np.int64, copy=False)
