"""Measuring search knobs on held-out queries: the cheapest setting reaching a recall target.

A setting is judged as a user meets it: queries that are not in the index (rows held out
of the sample before it is indexed), against exact search over what is indexed, timed as
one batch with every thread. For IVF indexes the sweep is over (nprobe, k_factor) when
there is a refine stage; for HNSW over efSearch; Flat has no knobs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

HELD_OUT = 1000     # queries: recall@10 is then known to about +-0.005
MARGIN = 0.005      # aim this much above the target, so held-out users see the target too
# A graph index is built again for the index itself, and two HNSW graphs of the same rows differ:
# MiniLM embeddings calibrated at 0.960 on the sample's graph measured 0.949 on the index's own.
GRAPH_MARGIN = 0.012
STALLS = 3          # a sweep stops after this many steps without a gain (that knob is not the limit)


def _geometric(low: int, high: int) -> tuple:
    """Integers from low to high in steps of 2**(1/4): fine enough to land near the target."""
    return tuple(sorted({int(round(low * 2 ** (i / 4))) for i in range(int(4 * np.log2(high / low)) + 1)}))


NPROBES = _geometric(1, 4096)
K_FACTORS = (2, 4, 8, 16, 32, 64, 128)
EF_SEARCHES = tuple(sorted({int(round(10 * 2 ** (i / 8))) for i in range(8 * 7 + 1)}))  # 10..1280, 9% steps


def aim(target: float, kind: str) -> float:
    """The recall a setting must reach on the held-out queries for the index to meet `target`."""
    if target >= 1.0:
        return target
    return min(target + (GRAPH_MARGIN if kind == "hnsw" else MARGIN), 1.0)


@dataclass(frozen=True)
class Setting:
    """Search knobs, the recall@k they reached on the held-out queries, and their cost."""

    params: Dict[str, int] = field(default_factory=dict)
    recall: float = 1.0
    seconds_per_query: float = 0.0

    def to_dict(self) -> dict:
        if not self.seconds_per_query:   # not measured
            return dict(self.params)
        return {**self.params, "recall_at_10": round(self.recall, 4),
                "qps": round(1.0 / self.seconds_per_query, 1) if self.seconds_per_query else None}


def held_out_split(sample: np.ndarray, n_queries: int = HELD_OUT, seed: int = 0):
    """(base, queries): `n_queries` random rows taken out of `sample` (at most a tenth of it)."""
    n_queries = min(n_queries, len(sample) // 10)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(sample), bool)
    mask[rng.choice(len(sample), n_queries, replace=False)] = True
    return np.ascontiguousarray(sample[~mask], np.float32), np.ascontiguousarray(sample[mask], np.float32)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    return faiss.knn(queries, base, min(k, len(base)), metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def calibrate(index, queries: np.ndarray, truth: np.ndarray, target: float, id_offset: int = 0,
              selector=None) -> Setting:
    """The cheapest knobs of `index` reaching recall >= `aim(target)` on `queries`, or the
    most accurate ones when none does. `truth` holds positions; results are ids - `id_offset`.
    `selector` (a faiss IDSelector) hides rows, e.g. held-out queries that are indexed."""
    kind = index_kind(index)
    goal = aim(target, kind)

    def measure(params: dict):
        faiss_params = search_parameters(index, params, selector)
        found = index.search(queries, truth.shape[1], params=faiss_params)[1] - id_offset
        return recall(found, truth), faiss_params

    reached, best = [], None
    for sweep in _sweeps(kind, index):
        previous, stalls = -1.0, 0
        for params in sweep:
            r, fp = measure(params)
            if best is None or r > best.recall:
                best = Setting(params, r, 0.0)
            if r >= goal:
                reached.append(Setting(params, r, seconds_per_query(index, queries, truth.shape[1], fp)))
                break
            stalls = stalls + 1 if r <= previous else 0
            if stalls >= STALLS:   # more of this knob no longer helps (e.g. the refine depth is the limit)
                break
            previous = max(previous, r)
    if reached:
        return min(reached, key=lambda s: s.seconds_per_query)
    return Setting(best.params, best.recall, seconds_per_query(index, queries, truth.shape[1],
                                                               search_parameters(index, best.params, selector)))


def _sweeps(kind: str, index):
    """Lists of knob settings, each in increasing cost; each list stops at its first success."""
    if kind == "flat":
        return [[{}]]
    if kind == "hnsw":
        return [[{"efSearch": ef} for ef in EF_SEARCHES]]
    nlist = _ivf(index).nlist
    probes = [p for p in NPROBES if p < nlist] + [nlist]
    if kind == "ivf":
        return [[{"nprobe": p} for p in probes]]
    return [[{"nprobe": p, "k_factor": f} for p in probes] for f in K_FACTORS]


def index_kind(index) -> str:
    """'ivf_refine', 'ivf', 'hnsw' or 'flat' (anything without knobs)."""
    import faiss

    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexIDMap):
        return index_kind(idx.index)
    if isinstance(idx, faiss.IndexRefine):
        return "ivf_refine" if _ivf(idx.base_index) is not None else index_kind(idx.base_index)
    if _ivf(idx) is not None:
        return "ivf"
    return "hnsw" if isinstance(idx, faiss.IndexHNSW) else "flat"


def _ivf(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def search_parameters(index, params: dict, selector=None):
    """faiss SearchParameters for `params` on `index` (refine -> IVF, HNSW, IDMap -> inner), the
    selector on the level that scans codes."""
    import faiss

    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexRefine):
        base = search_parameters(idx.base_index, params, selector)
        return faiss.IndexRefineSearchParameters(k_factor=float(params.get("k_factor", idx.k_factor)),
                                                 base_index_params=base)
    if isinstance(idx, faiss.IndexIDMap):
        return search_parameters(idx.index, params, selector)
    if isinstance(idx, faiss.IndexHNSW):
        out = faiss.SearchParametersHNSW(efSearch=int(params.get("efSearch", idx.hnsw.efSearch)))
    elif _ivf(idx) is not None:
        out = faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", _ivf(idx).nprobe)))
    else:
        out = faiss.SearchParameters()
    if selector is not None:
        out.sel = selector
    return out


def seconds_per_query(index, queries: np.ndarray, k: int, params, repeat: int = 3,
                      timer: Optional[Callable[[], float]] = None) -> float:
    """Best of `repeat` timed batch searches after a warm-up, divided by the batch size."""
    timer = timer or time.perf_counter
    index.search(queries, k, params=params)
    best = float("inf")
    for _ in range(repeat):
        t0 = timer()
        index.search(queries, k, params=params)
        best = min(best, timer() - t0)
    return best / max(len(queries), 1)


def head_to_head(contenders, queries: np.ndarray, k: int, rounds: int = 5) -> list:
    """Seconds per query of each (index, faiss params), timed in interleaved rounds (best
    of `rounds`): load from other processes then hits every contender alike, where
    settings timed minutes apart (each in its own sweep) can differ by 30% on a busy machine."""
    for index, params in contenders:  # warm-up
        index.search(queries, k, params=params)
    best = [float("inf")] * len(contenders)
    for _ in range(rounds):
        for i, (index, params) in enumerate(contenders):
            t0 = time.perf_counter()
            index.search(queries, k, params=params)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [b / max(len(queries), 1) for b in best]

