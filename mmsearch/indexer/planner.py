"""Choosing, training and tuning the FAISS index of an index build.

`auto` follows what was measured on this kind of machine (DESIGN.md §8):
exact Flat while it is fast enough; beyond that IVF with 4-bit fast-scan PQ
plus an exact refine stage (the fastest at recall@10 >= 0.95 here, ~25k QPS
at 200k x 768), with nprobe and the refine depth tuned on the data to a recall
target. When the full float32 vectors don't fit the memory budget, the refine
stage keeps them as float16, then as 8-bit scalar codes; only when even those
don't fit is it dropped (4-bit PQ alone: recall@10 0.13 at 1M x 1536, measured).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError

FLAT_MAX_ROWS = 50_000          # exact search stays within a few ms below this
DEFAULT_BUDGET = 4 << 30
TUNE_QUERIES = 256
# k-means points per IVF list: faiss samples up to 256 per list, but on a CPU that
# costs ~an hour at 1M x 768 (4096 lists); 40 per list (above faiss's 39-point
# warning) trains in minutes and, with the refine stage, costs little recall.
TRAIN_PER_LIST = (40, 256)
TRAIN_MIN = 100_000
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
K_FACTORS = (8, 16, 32, 64, 128, 256)   # refine candidates per result, tried by tune_filled
# Refine stages from the most to the least exact, with the bytes each keeps per dimension.
REFINES = (("RFlat", 4), ("Refine(SQfp16)", 2), ("Refine(SQ8)", 1))


@dataclass(frozen=True)
class Plan:
    factory: str
    nlist: int = 0
    search_params: Optional[dict] = None

    @property
    def needs_training(self) -> bool:
        return self.nlist > 0


def _pq_m(dim: int) -> int:
    """Sub-quantizers for 4-bit fast-scan PQ: 4 dims each, an even count dividing dim."""
    for m in range(dim // 4, 1, -1):
        if dim % m == 0 and m % 2 == 0:
            return m
    return 2


def choose_factory(n_rows: int, dim: int, memory_budget: Optional[int] = None) -> str:
    """The `auto` policy: an index_factory string from the row count and a memory budget."""
    budget = memory_budget or DEFAULT_BUDGET
    if n_rows <= FLAT_MAX_ROWS and n_rows * dim * 4 <= budget:
        return "Flat"
    nlist = int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(max(n_rows, 1)))))))
    m = _pq_m(dim)
    codes = n_rows * (m // 2 + 8)                 # 4-bit codes + int64 ids
    for refine, per_dim in REFINES:
        if codes + n_rows * dim * per_dim <= budget:
            return f"IVF{nlist},PQ{m}x4fs,{refine}"
    if codes <= budget:
        return f"IVF{nlist},PQ{m}x4fs"
    raise InputError(f"{n_rows} vectors of dim {dim} need at least {codes / 2**30:.2f} GiB even as 4-bit PQ codes; "
                     f"--memory-budget is {budget / 2**30:.2f} GiB")


def has_refine(factory: str) -> bool:
    """Whether an index_factory string ends in a refine stage (which takes a k_factor)."""
    last = factory.rsplit(",", 1)[-1]
    return last == "RFlat" or last.startswith("Refine(")


def plan(factory: str, dim: int, n_rows: int, memory_budget: Optional[int]) -> Plan:
    """Resolve `auto` and validate an explicit factory string by building it once."""
    import faiss

    spec = choose_factory(n_rows, dim, memory_budget) if factory == "auto" else factory
    try:
        probe = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"--index {spec!r} is not a valid faiss index_factory string for dim {dim}: "
                         f"{str(e).splitlines()[-1][:200]}") from None
    ivf = _ivf_of(probe)
    return Plan(spec, nlist=int(ivf.nlist) if (ivf is not None and not probe.is_trained) else 0)


def _ivf_of(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def train_size(p: Plan, requested: Optional[int]) -> int:
    if not p.needs_training:
        return 0
    low, high = TRAIN_PER_LIST
    return int(requested or min(high * p.nlist, max(low * p.nlist, TRAIN_MIN)))


def train(p: Plan, dim: int, sample: np.ndarray):
    """A trained, empty index. Uses every GPU when faiss has any (faiss-gpu)."""
    import faiss

    index = faiss.index_factory(dim, p.factory, faiss.METRIC_INNER_PRODUCT)
    if index.is_trained:
        return index
    if len(sample) < p.nlist:
        raise InputError(f"index {p.factory!r} needs at least {p.nlist} vectors to train, got {len(sample)}; "
                         f"use a smaller IVF (or --index Flat) for a corpus this small")
    ivf = faiss.extract_index_ivf(index)
    if faiss.get_num_gpus() > 0:  # k-means dominates training; it runs well on GPU
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    if hasattr(ivf, "clustering_index"):
        ivf.clustering_index = None
    return index


def tune(template, factory: str, vectors: np.ndarray, target: float, k: int = 10) -> dict:
    """Search defaults reaching recall@k >= target, measured on a copy of the trained
    `template` filled with `vectors` and queried with a sample of them (`tune_filled`)."""
    import faiss

    if _ivf_of(template) is None or len(vectors) == 0:
        return {}
    index = faiss.clone_index(template)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return tune_filled(index, factory, vectors, target, k)


def tune_filled(index, factory: str, vectors: np.ndarray, target: float, k: int = 10) -> dict:
    """The fastest (nprobe, k_factor) reaching recall@k >= target on `index` (holding
    `vectors`), against exact search for a sample of them as queries.

    nprobe alone is not enough: with more vectors, more of them outrank the true
    neighbours on their PQ codes, so the refine stage must see more candidates
    (at 1M x 768, k_factor 8 caps recall near 0.5 at any nprobe; 128 reaches 1.0).
    For each k_factor the smallest sufficient nprobe is found, then the pairs are
    timed. Returns the best effort (highest recall) when none reaches the target."""
    import faiss

    ivf = _ivf_of(index)
    if ivf is None or len(vectors) == 0:
        return {}
    rng = np.random.default_rng(0)
    q = vectors[rng.choice(len(vectors), size=min(TUNE_QUERIES, len(vectors)), replace=False)]
    q = np.ascontiguousarray(q, dtype=np.float32)
    _, truth = faiss.knn(q, np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(vectors)),
                         metric=faiss.METRIC_INNER_PRODUCT)
    refine = has_refine(factory)
    reached, best_effort = [], None
    for k_factor in (K_FACTORS if refine else (None,)):
        previous = -1.0
        for nprobe in (n for n in NPROBES if n <= ivf.nlist):
            params = _params(nprobe, k_factor)
            recall = _recall(index.search(q, truth.shape[1], params=params)[1], truth)
            found = {"nprobe": nprobe, "recall_at_10": round(recall, 4), **({"k_factor": k_factor} if refine else {})}
            if best_effort is None or recall > best_effort["recall_at_10"]:
                best_effort = found
            if recall >= target:
                reached.append((_seconds(index, q, truth.shape[1], params), found))
                break
            if recall <= previous:  # more lists no longer help: the refine stage is the limit
                break
            previous = recall
    return min(reached, key=lambda r: r[0])[1] if reached else best_effort


def _params(nprobe: int, k_factor: Optional[int]):
    import faiss

    params = faiss.SearchParametersIVF(nprobe=nprobe)
    return params if k_factor is None else faiss.IndexRefineSearchParameters(k_factor=k_factor,
                                                                             base_index_params=params)


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


def _seconds(index, q: np.ndarray, k: int, params, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        index.search(q, k, params=params)
        best = min(best, time.perf_counter() - t0)
    return best
