"""Token vectors of a multi-vector model (ColQwen2, ...): one flat matrix per shard.

    shards/NNNNN/tokens.npy         (T, d) float16, or int8 codes
    shards/NNNNN/token_offsets.npy  (rows + 1,) int64: item i owns tokens[offsets[i]:offsets[i+1]]
    shards/NNNNN/token_scales.npy   (T,) float32, int8 only: token = codes * scale

A page of ~700-1,000 tokens x 128 dims is ~200 KB as float16, ~100 KB as int8;
the flat layout lets exact MaxSim read a block of candidates with one fancy index
and no per-item file. int8 uses one symmetric scale per token (max |x| / 127):
the tokens are L2-normalised, so a per-token scale keeps every token's precision.
The files are written inside the shard's temporary folder (`shards.write_shard`),
so they share its durability: complete or absent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from mmsearch.errors import IndexFormatError, InputError
from mmsearch.multivector import TokenStore, quantize_tokens

from .fields import frozen_map, get_field
from .layout import TOKEN_OFFSETS_FILE, TOKEN_SCALES_FILE, TOKENS_FILE

TOKEN_PRECISIONS = ("float16", "int8")
# fastembed's MUVERA defaults (an FDE of 20 * 2**5 * 16 = 10,240 dims); `multivector.Muvera`'s arguments
FDE_DEFAULTS = {"k_sim": 5, "dim_proj": 16, "r_reps": 20, "seed": 42}
DEFAULT_CANDIDATES = 200


@dataclass(frozen=True)
class MultiVectorSpec:
    """How a multi-vector index is laid out (manifest key ``multi_vector``): the FAISS index
    holds one MUVERA FDE per item (the manifest model's `dim` is the FDE's), each shard the
    items' `token_dim`-d token vectors at `precision`; a search reranks the FDE's best
    `candidates` by exact MaxSim. `fde` are the `Muvera` arguments, and must be the query's."""

    token_dim: int
    precision: str = "float16"
    fde: Mapping[str, int] = field(default_factory=lambda: dict(FDE_DEFAULTS))
    candidates: int = DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        if not isinstance(self.token_dim, int) or self.token_dim < 1:
            raise IndexFormatError(f"multi_vector.token_dim must be a positive int, got {self.token_dim!r}")
        if self.precision not in TOKEN_PRECISIONS:
            raise IndexFormatError(f"multi_vector.precision {self.precision!r}: expected one of "
                                   f"{list(TOKEN_PRECISIONS)}")
        unknown = sorted(set(self.fde) - set(FDE_DEFAULTS))
        bad = {k: v for k, v in dict(self.fde).items() if isinstance(v, bool) or not isinstance(v, int)}
        if unknown or bad:
            raise IndexFormatError(f"multi_vector.fde: unknown keys {unknown} or non-integer values {bad}; "
                                   f"keys: {sorted(FDE_DEFAULTS)}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise IndexFormatError(f"multi_vector.candidates must be an int >= 1, got {self.candidates!r}")
        object.__setattr__(self, "fde", frozen_map({**FDE_DEFAULTS, **dict(self.fde)}))

    def to_dict(self) -> dict:
        return {"token_dim": self.token_dim, "precision": self.precision, "fde": dict(self.fde),
                "candidates": self.candidates}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MultiVectorSpec":
        w = "multi_vector"
        return cls(token_dim=get_field(d, "token_dim", w, int), precision=get_field(d, "precision", w, str),
                   fde=get_field(d, "fde", w, Mapping), candidates=get_field(d, "candidates", w, int))


@dataclass(frozen=True, eq=False)
class TokenMatrix:
    """The token vectors of consecutive items, flat, with row offsets."""

    values: np.ndarray             # (T, d) float16 or int8
    offsets: np.ndarray            # (rows + 1,) int64, offsets[0] == 0, offsets[-1] == T
    scales: Optional[np.ndarray] = None  # (T,) float32 for int8 values

    @classmethod
    def pack(cls, items: Sequence[np.ndarray], precision: str = "float16") -> "TokenMatrix":
        """Pack per-item (n_i, d) arrays; every item needs at least one token."""
        if precision not in TOKEN_PRECISIONS:
            raise InputError(f"token precision {precision!r}: expected one of {list(TOKEN_PRECISIONS)}")
        counts = np.array([len(m) for m in items], dtype=np.int64)
        if len(items) and counts.min() == 0:
            raise InputError(f"item #{int(np.argmin(counts))} has no token vectors")
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = np.concatenate([np.asarray(m, dtype=np.float32) for m in items]) if items else np.zeros((0, 0))
        values, scales = quantize_tokens(flat, precision)
        return cls(values, offsets, scales)

    def store(self) -> TokenStore:
        """These tokens as the MaxSim math's `TokenStore` (same arrays, no copy)."""
        return TokenStore(self.values, self.offsets, self.scales)

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def precision(self) -> str:
        return "int8" if self.scales is not None else "float16"

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.offsets.nbytes + (0 if self.scales is None else self.scales.nbytes))

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def item(self, i: int) -> np.ndarray:
        """Item i's tokens as float32 (n_i, d)."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.decode(slice(lo, hi))

    def decode(self, where) -> np.ndarray:
        """float32 tokens at `where` (a slice or an index array into the flat rows)."""
        values = np.asarray(self.values[where], dtype=np.float32)
        return values if self.scales is None else values * self.scales[where][:, None]

    def take(self, rows: Sequence[int]) -> "TokenMatrix":
        """The items `rows` (in that order), as a new packed matrix (compaction)."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts()[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) if len(rows) else \
            np.zeros(0, dtype=np.int64)
        return TokenMatrix(np.ascontiguousarray(self.values[flat]), offsets,
                           None if self.scales is None else np.ascontiguousarray(self.scales[flat]))

    @classmethod
    def concat(cls, parts: Sequence["TokenMatrix"]) -> "TokenMatrix":
        """The items of `parts`, one after the other (a graph shard growing, `indexer.graph_growth`)."""
        if len({p.precision for p in parts}) != 1:
            raise IndexFormatError(f"cannot concatenate token matrices of precisions {[p.precision for p in parts]}")
        starts = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, starts)])
        values = np.concatenate([np.asarray(p.values) for p in parts])
        scales = None if parts[0].scales is None else np.concatenate([np.asarray(p.scales) for p in parts])
        return cls(values, offsets.astype(np.int64), scales)

    def check(self, where: str, rows: Optional[int] = None) -> "TokenMatrix":
        o = self.offsets
        if self.values.ndim != 2 or o.ndim != 1 or len(o) < 1 or o[0] != 0 or o[-1] != len(self.values) \
                or np.any(np.diff(o) < 0):
            raise IndexFormatError(f"{where}: token offsets do not describe the token matrix "
                                   f"({len(self.values)} tokens, offsets {o[:3].tolist()}...{o[-1:].tolist()})")
        if rows is not None and self.rows != rows:
            raise IndexFormatError(f"{where}: token offsets cover {self.rows} items, the shard has {rows}")
        if self.scales is not None and len(self.scales) != len(self.values):
            raise IndexFormatError(f"{where}: {len(self.scales)} token scales for {len(self.values)} tokens")
        return self


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_tokens(folder: Path, tokens: TokenMatrix) -> None:
    """Write the token files into a shard folder being built (fsynced; the folder's rename publishes them)."""
    _save(folder / TOKENS_FILE, tokens.values)
    _save(folder / TOKEN_OFFSETS_FILE, tokens.offsets)
    if tokens.scales is not None:
        _save(folder / TOKEN_SCALES_FILE, tokens.scales)


def read_tokens(folder: Path, rows: Optional[int] = None, mmap: bool = True) -> TokenMatrix:
    """A shard folder's token matrix, memory-mapped: MaxSim reads only the candidates' pages."""
    mode = "r" if mmap else None
    try:
        values = np.load(folder / TOKENS_FILE, mmap_mode=mode, allow_pickle=False)
        offsets = np.load(folder / TOKEN_OFFSETS_FILE, allow_pickle=False)
        scales_path = folder / TOKEN_SCALES_FILE
        scales = np.load(scales_path, mmap_mode=mode, allow_pickle=False) if scales_path.exists() else None
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"cannot read token vectors in {folder}: {e}") from e
    return TokenMatrix(values, offsets, scales).check(str(folder), rows)
