"""Choosing, training and calibrating the FAISS index of an index build.

`auto` is decided by measuring, not by rule: below FLAT_MAX_ROWS exact Flat; above,
each candidate (IVF with 4-bit fast-scan PQ plus a refine stage at three list counts,
and HNSW32 built like hnswlib's M 32 / efConstruction 200) is built on the training sample minus 1,000
held-out rows, its knobs are swept to the recall target on those held-out queries, and
the cheapest per query wins (calibrate.py). Gaussian mixtures favour IVF (~25k QPS at
200k x 768 here); real sentence embeddings favour HNSW (IVF1024 with PQ and refine
never reached 0.95 at nprobe <= 64 on MiniLM vectors). When the full float32 vectors
don't fit the memory budget, the refine stage keeps them as float16, then as 8-bit
codes, and HNSW (which keeps them all) is not a candidate; only when even those don't
fit is the refine stage dropped (4-bit PQ alone: recall@10 0.13 at 1M x 1536).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..index_format import CALIBRATION_ROWS, join_budget
from . import calibrate as cal

if TYPE_CHECKING:
    from ..index_format import CompactSpec

FLAT_MAX_ROWS = 50_000          # exact search stays within a few ms below this
DEFAULT_BUDGET = 4 << 30
HNSW = "HNSW32"
HNSW_EF_CONSTRUCTION = 200      # as hnswlib's usual M 32 / efConstruction 200
HNSW_BYTES_PER_ROW = 32 * 2 * 4 + 16   # level-0 links (2M int32) + levels, beside the vectors
MIN_CALIBRATION_ROWS = 20      # a sample smaller than this is not calibrated (10% held out: 2 queries)
PROBE_ROWS = 10_000             # a graph candidate is first measured on this many rows (see choose)
# k-means points per IVF list: faiss samples up to 256 per list, but on a CPU that
# costs ~an hour at 1M x 768 (4096 lists); 40 per list (above faiss's 39-point
# warning) trains in minutes and, with the refine stage, costs little recall.
TRAIN_PER_LIST = (40, 256)
TRAIN_MIN = 100_000
# Refine stages from the most to the least exact, with the bytes each keeps per dimension.
COMPACT_SAMPLE_ROWS = 50_000   # rows `auto` measures its compact candidates on (compact_plan)
REFINES = (("RFlat", 4), ("Refine(SQfp16)", 2), ("Refine(SQ8)", 1))


@dataclass(frozen=True)
class Plan:
    factory: str
    nlist: int = 0
    search_params: Optional[dict] = None
    # `auto` on a large corpus: factories measured on the sample, the cheapest at the target wins
    candidates: Tuple[str, ...] = ()
    # compact vectors (`compact_plan`): the spec asked for, or several for the sample to decide between
    compact: Tuple["CompactSpec", ...] = ()
    # graphs a search would walk per query if the index is a graph: one while the graph grows
    # as one shard (`graph_growth`), else one per shard (IVF shards are joined at open,
    # `index_format.joined`, so they cost one search); `auto` weighs graphs by this
    graphs: int = 1

    @property
    def needs_training(self) -> bool:
        """Whether the build waits for a sample: to train IVF, to measure `candidates`, or to
        calibrate / choose its compact codes."""
        return self.nlist > 0 or len(self.candidates) > 1 or self.compact_sample > 0

    @property
    def compact_sample(self) -> int:
        """Rows held back before the manifest: to choose among compact candidates, or to calibrate int8."""
        if len(self.compact) > 1:
            return COMPACT_SAMPLE_ROWS
        return CALIBRATION_ROWS if any(c.needs_calibration for c in self.compact) else 0


def _pq_m(dim: int) -> int:
    """Sub-quantizers for 4-bit fast-scan PQ: 4 dims each, an even count dividing dim."""
    for m in range(dim // 4, 1, -1):
        if dim % m == 0 and m % 2 == 0:
            return m
    return 2


def choose_factory(n_rows: int, dim: int, memory_budget: Optional[int] = None) -> str:
    """The first of `auto`'s candidates (all of them are measured at build time)."""
    return auto_candidates(n_rows, dim, memory_budget)[0]


def auto_candidates(n_rows: int, dim: int, memory_budget: Optional[int] = None) -> Tuple[str, ...]:
    """The index_factory strings `auto` measures for this row count and memory budget."""
    budget = memory_budget or DEFAULT_BUDGET
    if n_rows <= FLAT_MAX_ROWS and n_rows * dim * 4 <= budget:
        return ("Flat",)
    m = _pq_m(dim)
    codes = n_rows * (m // 2 + 8)                 # 4-bit codes + int64 ids
    hnsw = (HNSW,) if n_rows * (dim * 4 + HNSW_BYTES_PER_ROW + 8) <= budget else ()
    for refine, per_dim in REFINES:
        if codes + n_rows * dim * per_dim <= budget:
            return tuple(f"IVF{n},PQ{m}x4fs,{refine}" for n in list_counts(n_rows)) + hnsw
    if codes <= budget:
        return tuple(f"IVF{n},PQ{m}x4fs" for n in list_counts(n_rows))
    raise InputError(f"{n_rows} vectors of dim {dim} need at least {codes / 2**30:.2f} GiB even as 4-bit PQ codes; "
                     f"--memory-budget is {budget / 2**30:.2f} GiB")


def list_counts(n_rows: int) -> Tuple[int, ...]:
    """The IVF list counts `auto` measures: faiss's usual 4 sqrt(n) (a power of two), a half
    and a quarter of it. Every query compares itself with all the centroids, which at high
    dimension can cost more than scanning the lists: on 200k x 768 Gaussian clusters IVF1024
    reached recall 0.95 at 1.4x the QPS of IVF2048, on anisotropic ones IVF512 at 1.2x."""
    top = int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(max(n_rows, 1)))))))
    return tuple(dict.fromkeys(max(64, top >> shift) for shift in (0, 1, 2)))


def has_refine(factory: str) -> bool:
    """Whether an index_factory string ends in a refine stage (which takes a k_factor)."""
    last = factory.rsplit(",", 1)[-1]
    return last == "RFlat" or last.startswith("Refine(")


def plan(factory: str, dim: int, n_rows: int, memory_budget: Optional[int], shard_size: Optional[int] = None) -> Plan:
    """Resolve `auto` and validate an explicit factory string by building it once. `n_rows`
    and `shard_size` give the shards the index will have."""
    import faiss

    candidates = auto_candidates(n_rows, dim, memory_budget) if factory == "auto" else (factory,)
    nlist = 0
    for spec in candidates:
        try:
            probe = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise InputError(f"--index {spec!r} is not a valid faiss index_factory string for dim {dim}: "
                             f"{str(e).splitlines()[-1][:200]}") from None
        ivf = _ivf_of(probe)
        nlist = max(nlist, int(ivf.nlist) if (ivf is not None and not probe.is_trained) else 0)
    shards = max(1, -(-n_rows // shard_size)) if shard_size and n_rows else 1
    graphs = 1 if graph_grows(n_rows, dim) else shards
    return Plan(candidates[0], nlist=nlist, candidates=candidates, graphs=graphs)


def graph_grows(rows: int, dim: int) -> bool:
    """Whether a graph of `rows` vectors may grow as one shard (`graph_growth`): the graph
    and a float32 copy of its vectors (read back to rewrite the shard) fit in half the
    memory available now."""
    return rows * (2 * 4 * dim + HNSW_BYTES_PER_ROW) <= join_budget()


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
    lists = min(high * p.nlist, max(low * p.nlist, TRAIN_MIN)) if p.nlist else 0
    if p.compact:  # a binary IVF's lists, and the codes' own calibration or choice
        return int(requested or max(p.compact_sample, lists))
    return int(requested or lists)


def empty_index(factory: str, dim: int):
    """A new index for `factory`; HNSW graphs built as carefully as hnswlib's usual setting."""
    import faiss

    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def train(p: Plan, dim: int, sample: np.ndarray):
    """A trained, empty index. Uses every GPU when faiss has any (faiss-gpu)."""
    import faiss

    index = empty_index(p.factory, dim)
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


SEARCH_KNOBS = ("nprobe", "k_factor", "efSearch")


@dataclass(frozen=True)
class Choice:
    """The index a build uses: its factory, trained empty template, calibrated knobs, and
    what was measured (recorded in the manifest as `faiss.calibration`)."""

    factory: str
    template: object
    setting: cal.Setting
    calibration: Dict[str, object] = field(default_factory=dict)

    @property
    def tuning(self) -> dict:
        return self.setting.to_dict()


def search_defaults(tuning: dict) -> dict:
    """The search knobs of a tuning record (dropping its recall and QPS)."""
    return {k: v for k, v in tuning.items() if k in SEARCH_KNOBS}


def choose(p: Plan, dim: int, sample: np.ndarray, target: float, k: int = 10) -> Choice:
    """Build each candidate of `p` on `sample` minus held-out rows, calibrate its knobs to
    `target` on those rows, and keep the cheapest that reaches it (else the most accurate).
    The template of the winner is trained on the sample without the held-out rows."""
    if len(sample) < MIN_CALIBRATION_ROWS:  # too few rows to hold any out: faiss's own defaults
        factory = (p.candidates or (p.factory,))[0]
        return Choice(factory, train(Plan(factory, nlist=p.nlist), dim, sample), cal.Setting())
    base, queries = cal.held_out_split(sample)
    truth = cal.exact_neighbours(base, queries, k)
    measured, notes, filled = {}, {}, {}

    def reached(factory: str) -> bool:  # the target, with the margin of the candidate's kind
        return measured[factory][1].recall >= cal.aim(target, cal.index_kind(measured[factory][0]))

    def cost(factory: str) -> float:  # per query on the index: every graph walked, IVF shards joined
        return measured[factory][1].seconds_per_query * (p.graphs if "HNSW" in factory else 1)

    for factory in p.candidates or (p.factory,):
        best = min((cost(f) for f in measured if reached(f)), default=None)
        t0 = time.perf_counter()
        slower = _graph_slower_than(factory, dim, base, queries, target, best and best / p.graphs)
        if slower:
            notes[factory] = {"skipped": slower, "seconds": round(time.perf_counter() - t0, 1)}
            continue
        template = train(Plan(factory, nlist=p.nlist), dim, base)
        index, setting = _measure(template, base, queries, truth, target)
        measured[factory], filled[factory] = (template, setting), index
        notes[factory] = {"seconds": round(time.perf_counter() - t0, 1)}   # to build and calibrate
    _retime(measured, filled, queries, k, reached)
    factory = min(measured, key=lambda f: (not reached(f), cost(f) if reached(f) else -measured[f][1].recall))
    template, setting = measured[factory]
    calibration = {"recall_at_10": round(setting.recall, 4), "target": target, "queries": len(queries),
                   "graphs_planned": p.graphs,
                   "rows": len(base), "held_out": "sample rows not indexed",
                   "candidates": {f: {**(measured[f][1].to_dict() if f in measured else {}), **notes[f]}
                                  for f in notes}}
    return Choice(factory, template, setting, calibration)


def _measure(template, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, target: float):
    """(the template filled with `base`, its calibrated setting)."""
    import faiss

    index = faiss.clone_index(template)
    index.add(base)
    return index, cal.calibrate(index, queries, truth, target)


def _retime(measured: dict, filled: dict, queries: np.ndarray, k: int, reached) -> None:
    """The candidates that `reached` the target, timed again side by side at their settings
    (their sweeps ran minutes apart): the costs compared are then measured under the same load."""
    names = [f for f in filled if reached(f)]
    if len(names) < 2:
        return
    contenders = [(filled[f], cal.search_parameters(filled[f], measured[f][1].params)) for f in names]
    for f, seconds in zip(names, cal.head_to_head(contenders, queries, k)):
        template, setting = measured[f]
        measured[f] = (template, cal.Setting(setting.params, setting.recall, seconds))


def _graph_slower_than(factory: str, dim: int, base: np.ndarray, queries: np.ndarray, target: float,
                       best: Optional[float]) -> Optional[str]:
    """Why a graph candidate cannot win, or None. Its cost per query grows with the rows, so
    when it is already slower at the target on PROBE_ROWS rows than the best candidate on the
    whole sample, building it on the whole sample (the costly part of measuring) is skipped."""
    if best is None or "HNSW" not in factory or len(base) <= 2 * PROBE_ROWS:
        return None
    small = base[np.random.default_rng(1).choice(len(base), PROBE_ROWS, replace=False)]
    _, setting = _measure(empty_index(factory, dim), small, queries, cal.exact_neighbours(small, queries, 10), target)
    if setting.seconds_per_query <= best:
        return None
    return (f"on {PROBE_ROWS} rows already {setting.seconds_per_query * 1e6:.0f} us/query at recall "
            f"{setting.recall:.3f}, slower than the best candidate's {best * 1e6:.0f} us on {len(base)} rows")


def tune_filled(index, vectors: np.ndarray, target: float, k: int = 10, id_offset: int = 0) -> dict:
    """Re-calibrate an IVF index filled with `vectors` (ids `id_offset` + position): held-out
    rows are hidden from the search by a selector and from the truth, so for IVF (whose
    lists don't depend on them) this equals indexing without them. {} for other kinds:
    an HNSW graph is shaped by its rows, so hiding them would flatter it."""
    import faiss

    if cal.index_kind(index) not in ("ivf", "ivf_refine") or len(vectors) < 20:
        return {}
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(vectors), min(cal.HELD_OUT, len(vectors) // 10), replace=False))
    keep = np.setdiff1d(np.arange(len(vectors)), rows)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    truth = keep[cal.exact_neighbours(np.ascontiguousarray(x[keep]), x[rows], k)]
    # the selector works in the label space of the level that scans codes: an IDMap's inner positions
    wrapped = isinstance(faiss.downcast_index(index), faiss.IndexIDMap)
    hidden = faiss.IDSelectorBatch(rows if wrapped else rows + id_offset)
    selector = faiss.IDSelectorNot(hidden)
    return cal.calibrate(index, np.ascontiguousarray(x[rows]), truth, target, id_offset, selector).to_dict()
