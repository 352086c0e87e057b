"""Compact vectors: the first stage of a search on truncated and/or quantised codes.

An index may store, in its FAISS shards, not the model's vectors but a compact form of
them, recorded in the manifest as a `CompactSpec`:

- **Matryoshka truncation** (`dim` < `full_dim`): the first `dim` components, L2
  re-normalised, as the MRL paper and sentence-transformers' `truncate_dim` do. Queries
  are cut the same way by the search; the full vectors stay on disk (vectors.npy, read
  by memory map) for rescoring.
- **Precision**: `float32`; `float16` (faiss SQfp16); `int8`, per-dimension ranges
  calibrated on a sample of the corpus exactly as sentence-transformers'
  `quantize_embeddings` does (``floor((x - min) / ((max - min) / 255))`` clipped to
  0..255, minus 128), held by a faiss SQ8 index whose trained ranges are those; `binary`,
  one sign bit per dimension (``np.packbits(x > 0)``) in a faiss binary index searched
  by Hamming distance.
- **Rescoring**: the first stage returns ``oversample * k`` candidates, which are
  rescored exactly against the stored float vectors (`mmsearch.query.rescore`).

A shard index of a compact spec is written through `CompactIndex` (which takes the full
vectors and stores their codes) and read back by `read_faiss_index`, which recognises a
binary faiss file by its header.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Tuple

import faiss
import numpy as np

from mmsearch.errors import IndexFormatError, InputError

from .fields import frozen_map, get_field

PRECISIONS = ("float32", "float16", "int8", "binary")
RESCORE_FROM = ("float16", "int8")  # what vectors.npy keeps of the full vectors
# bytes per stored dimension of each precision's codes
CODE_BYTES = {"float32": 4.0, "float16": 2.0, "int8": 1.0, "binary": 1.0 / 8}
DEFAULT_OVERSAMPLE = 4.0
CALIBRATION_ROWS = 10_000      # int8 ranges: min/max per dimension over this many rows of the corpus
_SQ = {"float16": "SQfp16", "int8": "SQ8"}
_GRAPH = re.compile(r"^HNSW(\d+)$")
_LISTS = re.compile(r"^IVF(\d+)$")
_QUERY_BLOCK = 256  # queries per block of gathered candidate vectors (bounds memory)


@dataclass(frozen=True)
class CompactSpec:
    """How an index's first stage stores vectors (the manifest's ``compact`` record).

    `dim`: the stored (Matryoshka) size; `full_dim`: the model's; `oversample`: a search
    for k rescores ``oversample * k`` first-stage candidates; `rescore`: whether it does
    (against the shards' vectors.npy); `ranges`: int8's (min, max) per dimension and
    `calibration` how they were measured; `choice`: what `auto` measured to pick this.
    `rescore_from`: what vectors.npy keeps to rescore with, the full vectors as float16
    (default) or as int8 codes (half the bytes; `rescore_ranges`: their per-dimension
    (min, max) at full size, calibrated like `ranges`)."""

    precision: str
    dim: int
    full_dim: int
    oversample: float = DEFAULT_OVERSAMPLE
    rescore: bool = True
    ranges: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
    calibration: Mapping[str, Any] = field(default_factory=dict)
    choice: Mapping[str, Any] = field(default_factory=dict)
    rescore_from: str = "float16"
    rescore_ranges: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"precision={self.precision!r}; valid: {', '.join(PRECISIONS)}")
        for name in ("dim", "full_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"compact {name} must be a positive int, got {v!r}")
        if self.dim > self.full_dim:
            raise InputError(f"dim={self.dim} is larger than the model's {self.full_dim} dimensions")
        if self.precision == "binary" and self.dim % 8:
            raise InputError(f"binary codes need a dim that is a multiple of 8, got {self.dim}")
        if isinstance(self.oversample, bool) or not isinstance(self.oversample, (int, float)) or self.oversample < 1:
            raise InputError(f"oversample={self.oversample!r}: expected a number >= 1")
        if self.rescore_from not in RESCORE_FROM:
            raise InputError(f"rescore_from={self.rescore_from!r}; valid: {', '.join(RESCORE_FROM)}")
        for name, width in (("ranges", self.dim), ("rescore_ranges", self.full_dim)):
            if getattr(self, name) is not None:
                lo, hi = (tuple(float(v) for v in r) for r in getattr(self, name))
                if len(lo) != width or len(hi) != width:
                    raise IndexFormatError(f"int8 {name} have {len(lo)}/{len(hi)} values, expected {width}")
                object.__setattr__(self, name, (lo, hi))
        object.__setattr__(self, "calibration", frozen_map(self.calibration))
        object.__setattr__(self, "choice", frozen_map(self.choice))

    @property
    def truncated(self) -> bool:
        return self.dim < self.full_dim

    @property
    def code_bytes(self) -> float:
        """Bytes of one vector's codes (what the first stage keeps per row, beside ids and links)."""
        return self.dim * CODE_BYTES[self.precision]

    @property
    def needs_calibration(self) -> bool:
        return (self.precision == "int8" and self.ranges is None) or \
            (self.rescore_from == "int8" and self.rescore_ranges is None)

    def depth(self, k: int, rows: int, oversample: Optional[float] = None, rescore: Optional[bool] = None) -> int:
        """First-stage candidates of a search for `k` (oversampled when rescoring)."""
        if not (self.rescore if rescore is None else rescore):
            return min(k, rows)
        return min(rows, max(k, int(np.ceil(k * (oversample or self.oversample)))))

    def calibrated(self, sample: np.ndarray, seed: int = 0) -> "CompactSpec":
        """This spec with its int8 ranges (the codes', the rescoring copy's) measured on (up to
        CALIBRATION_ROWS rows of) `sample`."""
        if not self.needs_calibration:
            return self
        if sample is None or len(sample) == 0:
            raise InputError("int8 codes need a calibration sample of the corpus; none was given")
        rows = np.random.default_rng(seed).permutation(len(sample))[:CALIBRATION_ROWS]
        full = np.asarray(sample, np.float32)[np.sort(rows)]
        note = {"rows": int(len(rows)), "of": int(len(sample)), "seed": seed,
                "method": "per-dimension min/max (sentence-transformers quantize_embeddings)"}
        out = replace(self, calibration=note)
        if self.precision == "int8":
            lo, hi = int8_ranges(first_stage_vectors(full, self.dim))
            out = replace(out, ranges=(tuple(lo.tolist()), tuple(hi.tolist())))
        if self.rescore_from == "int8":
            lo, hi = int8_ranges(full)
            out = replace(out, rescore_ranges=(tuple(lo.tolist()), tuple(hi.tolist())))
        return out

    def to_dict(self) -> dict:
        out = {"precision": self.precision, "dim": self.dim, "full_dim": self.full_dim,
               "oversample": self.oversample, "rescore": self.rescore}
        if self.ranges is not None:
            out["int8_ranges"] = {"min": list(self.ranges[0]), "max": list(self.ranges[1])}
        if self.rescore_from != "float16":  # absent: the float16 copy every earlier index keeps
            out["rescore_from"] = self.rescore_from
        if self.rescore_ranges is not None:
            out["rescore_int8_ranges"] = {"min": list(self.rescore_ranges[0]), "max": list(self.rescore_ranges[1])}
        for name in ("calibration", "choice"):
            if getattr(self, name):
                out[name] = _plain(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CompactSpec":
        w = "compact"
        ranges = get_field(d, "int8_ranges", w, Mapping, optional=True)
        copy = get_field(d, "rescore_int8_ranges", w, Mapping, optional=True)
        return cls(precision=get_field(d, "precision", w, str), dim=get_field(d, "dim", w, int),
                   full_dim=get_field(d, "full_dim", w, int),
                   oversample=get_field(d, "oversample", w, (int, float)), rescore=get_field(d, "rescore", w, bool),
                   ranges=None if ranges is None else (get_field(ranges, "min", f"{w}.int8_ranges", list),
                                                       get_field(ranges, "max", f"{w}.int8_ranges", list)),
                   calibration=get_field(d, "calibration", w, Mapping, optional=True) or {},
                   choice=get_field(d, "choice", w, Mapping, optional=True) or {},
                   rescore_from=get_field(d, "rescore_from", w, str, optional=True) or "float16",
                   rescore_ranges=None if copy is None else (
                       get_field(copy, "min", f"{w}.rescore_int8_ranges", list),
                       get_field(copy, "max", f"{w}.rescore_int8_ranges", list)))


def _plain(value):
    import json

    return json.loads(json.dumps(value, default=dict))


# --- the codes --------------------------------------------------------------------------------

def first_stage_vectors(x: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` components of each row, L2 re-normalised (Matryoshka truncation);
    rows as they are when `dim` is their size. C-contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < dim:
        raise InputError(f"vectors of shape {x.shape} cannot be truncated to {dim} dimensions")
    if x.shape[1] == dim:
        return np.ascontiguousarray(x)
    cut = x[:, :dim]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return np.ascontiguousarray(cut / np.where(norms > 0, norms, 1), dtype=np.float32)


def int8_ranges(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-dimension (min, max) of a calibration sample, float32."""
    x = np.asarray(x, dtype=np.float32)
    return x.min(axis=0), x.max(axis=0)


def _steps(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    steps = (hi - lo) / 255
    return np.where(steps == 0, 1, steps).astype(np.float32)


def quantize_int8(x: np.ndarray, ranges) -> np.ndarray:
    """int8 codes: ``clip(floor((x - min) / step), 0, 255) - 128``, step = (max - min) / 255."""
    lo, hi = (np.asarray(r, dtype=np.float32) for r in ranges)
    q = np.clip(np.floor((np.asarray(x, np.float32) - lo) / _steps(lo, hi)), 0, 255)
    return (q - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges) -> np.ndarray:
    """The centre of each code's bucket, float32 (as faiss's SQ8 decodes its codes)."""
    lo, hi = (np.asarray(r, dtype=np.float32) for r in ranges)
    return (lo + (codes.astype(np.float32) + 128.5) * _steps(lo, hi)).astype(np.float32)


def stored_vectors(x: np.ndarray, spec: Optional[CompactSpec]) -> np.ndarray:
    """What vectors.npy keeps of the full vectors `x`: float16, or the int8 codes of a spec
    that rescores from int8."""
    if spec is not None and spec.rescore_from == "int8":
        return quantize_int8(x, spec.rescore_ranges)
    return np.ascontiguousarray(x, dtype=np.float16)


def vectors_of_stored(stored: np.ndarray, spec: Optional[CompactSpec]) -> np.ndarray:
    """float32 vectors from rows of vectors.npy (int8 codes decoded with the spec's ranges)."""
    if stored.dtype == np.int8:
        if spec is None or spec.rescore_ranges is None:
            raise IndexFormatError("vectors.npy holds int8 codes, but the manifest records no rescore_int8_ranges")
        return dequantize_int8(stored, spec.rescore_ranges)
    return np.asarray(stored, dtype=np.float32)


def binarize(x: np.ndarray) -> np.ndarray:
    """Sign bits, 8 per byte (``np.packbits(x > 0)``, big-endian bit order): uint8 (n, dim / 8)."""
    return np.packbits(np.asarray(x) > 0, axis=-1)


def hamming_scores(distances: np.ndarray, dim: int) -> np.ndarray:
    """Hamming distances as similarities in [-1, 1] (1 - 2h/dim; larger is better)."""
    return (1.0 - 2.0 * np.asarray(distances, np.float32) / dim).astype(np.float32)


# --- the two stages of a search ------------------------------------------------------------------

def first_stage_queries(spec: CompactSpec, xq: np.ndarray) -> np.ndarray:
    """The queries as the first stage compares them: truncated, re-normalised, binary as bits."""
    x = first_stage_vectors(xq, spec.dim)
    return binarize(x) if spec.precision == "binary" else x


def first_stage_scores(spec: CompactSpec, D: np.ndarray) -> np.ndarray:
    """The first stage's distances as scores (Hamming distances become similarities)."""
    return hamming_scores(D, spec.dim) if spec.precision == "binary" else D


def rescore(xq: np.ndarray, I: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray], k: int,
            keep_max: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """The top `k` of each query's candidates `I` (n, depth; -1 for none) by the exact metric
    between `xq` (n, d) and `vectors_of(rows)` (float32 (len(rows), d) for 1-d rows).
    Each distinct row is read once; scores are computed in blocks of queries."""
    n, depth = I.shape
    k = min(k, depth)
    worst = -np.finfo(np.float32).max if keep_max else np.finfo(np.float32).max
    D_out = np.full((n, k), worst, dtype=np.float32)
    I_out = np.full((n, k), -1, dtype=np.int64)
    valid = I >= 0
    if not valid.any():
        return D_out, I_out
    rows, where = np.unique(I[valid], return_inverse=True)
    vectors = np.ascontiguousarray(vectors_of(rows), dtype=np.float32)
    slot = np.full(I.shape, -1, dtype=np.int64)
    slot[valid] = where
    for lo in range(0, n, _QUERY_BLOCK):
        hi = min(n, lo + _QUERY_BLOCK)
        s, ok = slot[lo:hi], valid[lo:hi]
        cand = vectors[np.maximum(s, 0)]                     # (b, depth, d)
        if keep_max:
            scores = np.matmul(cand, xq[lo:hi, :, None])[..., 0]
        else:
            diff = cand - xq[lo:hi, None, :]
            scores = np.einsum("bjd,bjd->bj", diff, diff)
        scores = np.where(ok, scores, worst).astype(np.float32)
        order = np.argsort(-scores if keep_max else scores, axis=1, kind="stable")[:, :k]
        D_out[lo:hi] = np.take_along_axis(scores, order, axis=1)
        I_out[lo:hi] = np.where(np.take_along_axis(ok, order, axis=1), np.take_along_axis(I[lo:hi], order, axis=1), -1)
    return D_out, I_out


# --- faiss indexes ------------------------------------------------------------------------------

def faiss_factory(precision: str, base: str) -> str:
    """The faiss factory string storing `precision` codes with first stage `base` ("Flat",
    "HNSW<M>", or for binary codes "IVF<nlist>"): e.g. ("int8", "HNSW32") -> "HNSW32,SQ8",
    ("binary", "Flat") -> "BFlat", ("binary", "IVF1024") -> "BIVF1024"."""
    graph, lists = _GRAPH.match(base), _LISTS.match(base)
    if precision == "binary" and lists is not None:
        return f"BIVF{lists.group(1)}"
    if base != "Flat" and graph is None:
        raise InputError(f"--index {base!r} with precision {precision!r}: compact codes are searched by a Flat "
                         f"or HNSW<M> first stage (e.g. --index Flat, --index HNSW32; binary codes also "
                         f"IVF<nlist>), or use precision float32")
    if precision == "float32":
        return base
    if precision == "binary":
        return "BFlat" if graph is None else f"BHNSW{graph.group(1)}"
    return _SQ[precision] if graph is None else f"{base},{_SQ[precision]}"


def factory_lists(factory: str) -> int:
    """The inverted lists a binary IVF factory ("BIVF<nlist>") trains, else 0."""
    match = re.match(r"^BIVF(\d+)$", factory)
    return int(match.group(1)) if match else 0


def train_binary_lists(spec: CompactSpec, factory: str, sample: np.ndarray):
    """A binary IVF index (`factory`, "BIVF<nlist>") trained on the codes of `sample`."""
    nlist = factory_lists(factory)
    if sample is None or len(sample) < nlist:
        raise InputError(f"index {factory!r} needs at least {nlist} vectors to train its lists, the corpus gave "
                         f"{0 if sample is None else len(sample)}; pass a smaller IVF<nlist> or --index Flat")
    index = faiss.index_binary_factory(spec.dim, factory)
    index.train(binarize(first_stage_vectors(np.asarray(sample, np.float32), spec.dim)))
    return index


def empty_faiss_index(spec: CompactSpec, factory: str, metric: int):
    """An empty faiss index of `factory` (see `faiss_factory`) for `spec`'s codes, trained
    (int8: the calibrated ranges) and ready to add to. Binary IVF lists need a trained
    template instead (`train_binary_lists`)."""
    if factory_lists(factory):
        raise IndexFormatError(f"index {factory!r} is trained on the corpus: fill a copy of its trained template")
    if spec.precision == "binary":
        index = faiss.index_binary_factory(spec.dim, factory)
    else:
        index = faiss.index_factory(spec.dim, factory, metric)
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = 200
    if spec.precision == "int8":
        if spec.ranges is None:
            raise IndexFormatError("an int8 index needs calibrated ranges (CompactSpec.calibrated)")
        sq_index = faiss.downcast_index(index.storage) if hnsw is not None else index
        lo, hi = (np.asarray(r, dtype=np.float32) for r in spec.ranges)
        faiss.copy_array_to_vector(np.concatenate([lo, hi - lo]), sq_index.sq.trained)
        sq_index.is_trained = True
        index.is_trained = True
    elif not index.is_trained:  # SQfp16 needs no data, only the call
        index.train(np.zeros((1, spec.dim), np.float32))
    return index


class CompactIndex:
    """A shard index being filled: takes full vectors, stores `spec`'s codes in `faiss`.

    ``d`` is the width of the vectors it takes (the model's), ``faiss`` the index written
    to the shard (an id map around the codes). `template`: the index's trained binary IVF
    (a fresh copy, filled here) instead of a new empty index."""

    def __init__(self, spec: CompactSpec, factory: str, metric: int, template=None):
        self.spec = spec
        inner = template if template is not None else empty_faiss_index(spec, factory, metric)
        self.faiss = faiss.IndexBinaryIDMap(inner) if spec.precision == "binary" else faiss.IndexIDMap(inner)
        self._inner = inner  # the id map does not own it
        self.d = spec.full_dim

    @property
    def ntotal(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def is_trained(self) -> bool:
        return True

    def codes_of(self, x: np.ndarray) -> np.ndarray:
        """What the first stage stores (and searches with) for full vectors `x`."""
        if x.shape[1] != self.d:
            raise InputError(f"vectors have {x.shape[1]} dimensions, this index takes the model's {self.d}")
        x = first_stage_vectors(x, self.spec.dim)
        return binarize(x) if self.spec.precision == "binary" else x

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.faiss.add_with_ids(self.codes_of(np.asarray(x, np.float32)), np.asarray(ids, np.int64))


def is_binary(index) -> bool:
    return isinstance(index, faiss.IndexBinary)


def write_faiss_index(index, path: str) -> None:
    (faiss.write_index_binary if is_binary(index) else faiss.write_index)(index, path)


def is_binary_file(path: str) -> bool:
    """Whether a faiss file holds a binary index (faiss's binary fourccs start with "IB")."""
    with open(path, "rb") as f:
        return f.read(2) == b"IB"


def read_faiss_index(path: str, flags: int = 0):
    """A faiss index file, float or binary (by its header)."""
    reader = faiss.read_index_binary if is_binary_file(path) else faiss.read_index
    return reader(path, flags) if flags else reader(path)


def downcast(index):
    """faiss's concrete class of a float or binary index."""
    return faiss.downcast_IndexBinary(index) if is_binary(index) else faiss.downcast_index(index)
