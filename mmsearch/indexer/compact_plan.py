"""Compact vectors at build time (issue #25): what a build asks for, and what `auto` picks.

- Asked for: ``precision`` (float32, float16, int8, binary), ``dim`` with ``keep_full``
  (encode at the model's full size, index the Matryoshka truncation, keep the full vectors
  in vectors.npy for rescoring), ``oversample`` and ``rescore``. One `CompactSpec`.
- Chosen: with ``index="auto"``, a memory budget the float32 vectors do not fit, and stored
  vectors to rescore from (or ``precision="auto"``), every (dim, precision) whose codes fit
  the budget is measured on the build's sample: held-out rows as queries, exact float32
  search over the rest as the truth, the first stage plus rescoring swept over oversampling
  factors up to the recall target. The fastest candidate reaching the target wins (else the
  most accurate); the manifest records all of them (``compact.choice``).

Dims come from the model's Matryoshka sizes (its recipe's list, or halvings down to the
family's smallest size); a model without sizes is measured at its own dim only.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..index_format import (CompactIndex, CompactSpec, factory_lists, faiss_factory, faiss_metric,
                            first_stage_queries, rescore, stored_vectors, vectors_of_stored)
from . import calibrate as cal
from . import planner

OVERSAMPLES = (1, 2, 4, 8, 16, 32)    # swept per candidate, the first reaching the target is kept
ID_BYTES = 8                          # the int64 id each row keeps beside its codes
MAX_CANDIDATES = 16


def encoder_settings(settings):
    """The settings to load the build's encoder with: at full size when the truncation is
    the index's (`keep_full`), not the encoder's."""
    return replace(settings, dim=None) if settings.keep_full else settings


def apply(make_plan, settings, encoder, known, rows, sizes: Optional[Sequence[int]] = None):
    """The build's `planner.Plan` (`make_plan()`, the FAISS side) with its compact codes: those
    asked for, the candidates `auto` will measure on the sample, or none. A resumed index keeps
    its own (`known`'s). `rows()`: the corpus's (estimated) row count; `sizes`: the Matryoshka
    sizes to consider (default: the encoder's family's, `matryoshka_sizes`)."""
    full = int(encoder.dim)
    if known is not None:
        have = known.compact.precision if known.compact is not None else "float32"
        if settings.precision not in (None, "auto", have):
            raise InputError(f"the index stores {have} codes; --precision {settings.precision} needs --overwrite "
                             f"(a rebuild)")
        return make_plan()
    asked = requested(settings, full)
    if asked is not None:
        if asked.truncated and sizes is None:
            _check_size(encoder, asked.dim)
        base = settings.index if settings.index != "auto" else _auto_base(asked, rows())
        factory = faiss_factory(asked.precision, base)
        return planner.Plan(factory, nlist=factory_lists(factory), compact=(asked,))
    n = rows() if settings.index == "auto" or settings.precision == "auto" else 0
    if not wants_auto(settings, full, n):
        return make_plan()
    specs = candidates(full, sizes or matryoshka_sizes(encoder), n, settings.memory_budget, settings.oversample,
                       settings.rescore)
    specs = tuple(replace(s, rescore_from=settings.rescore_from) for s in specs)
    note = {"budget": settings.memory_budget, "rows_planned": n}
    return planner.Plan("Flat", compact=tuple(replace(s, choice=note) for s in specs))


def _auto_base(spec: CompactSpec, n_rows: int) -> str:
    """Binary codes are scanned (Hamming over 1-bit codes is cheap; graph links would outweigh
    them); other codes: Flat up to the planner's exact-search limit, then HNSW32."""
    return "Flat" if spec.precision == "binary" or n_rows <= planner.FLAT_MAX_ROWS else planner.HNSW


def _check_size(encoder, dim: int) -> None:
    """A Matryoshka size the encoder's family allows (ModelLoadError naming the valid ones)."""
    recipe = getattr(encoder, "recipe", None)
    if recipe is not None:
        recipe.check_dim(dim, int(encoder.dim), getattr(encoder, "matryoshka_dims", None))
    elif not 0 < dim < int(encoder.dim):
        raise InputError(f"dim={dim}: the model's vectors have {encoder.dim} dimensions")


def requested(settings, full_dim: int) -> Optional[CompactSpec]:
    """The spec a build explicitly asks for (None: float32 as encoded, nothing compact)."""
    if settings.precision in (None, "auto") and not settings.keep_full:
        return None
    dim = settings.dim if settings.keep_full and settings.dim else full_dim
    return CompactSpec(settings.precision if settings.precision not in (None, "auto") else "float32", dim, full_dim,
                       oversample=settings.oversample, rescore=settings.rescore, rescore_from=settings.rescore_from)


def wants_auto(settings, full_dim: int, n_rows: int) -> bool:
    """Whether the budget chooses dim and precision: asked for, or `auto` with a budget that
    the float32 vectors exceed (and stored vectors to rescore from)."""
    if settings.precision == "auto":
        return True
    return (settings.precision is None and not settings.keep_full and settings.index == "auto"
            and settings.memory_budget is not None and settings.store_vectors
            and n_rows * (full_dim * 4 + ID_BYTES) > settings.memory_budget)


def matryoshka_sizes(encoder) -> Tuple[int, ...]:
    """The sizes `encoder`'s vectors may be truncated to, largest first (its own dim first)."""
    dim = int(encoder.dim)
    recipe = getattr(encoder, "recipe", None)
    return (dim,) + (recipe.sizes(dim, getattr(encoder, "matryoshka_dims", None)) if recipe is not None else ())


def candidates(full_dim: int, sizes: Sequence[int], n_rows: int, budget: Optional[int], oversample: float,
               rescore: bool = True) -> Tuple[CompactSpec, ...]:
    """Every (dim, precision) whose codes (and ids) fit `budget`, smallest codes last."""
    out = []
    for dim in sizes:
        for precision in ("float32", "float16", "int8", "binary"):
            if (precision == "float32" and dim == full_dim) or (precision == "binary" and dim % 8):
                continue
            spec = CompactSpec(precision, dim, full_dim, oversample=oversample, rescore=rescore)
            if budget is None or ram_bytes(spec, n_rows) <= budget:
                out.append(spec)
    if not out:
        need = n_rows * (min(sizes) / 8 + ID_BYTES)
        raise InputError(f"{n_rows} vectors need {need / 2**30:.3f} GiB even as binary codes of {min(sizes)} "
                         f"dimensions; --memory-budget is {budget / 2**30:.3f} GiB")
    return tuple(sorted(out, key=lambda s: -s.code_bytes))[:MAX_CANDIDATES]


def ram_bytes(spec: CompactSpec, n_rows: int) -> int:
    """What the first stage keeps in memory for `n_rows` (codes and ids; Flat first stage)."""
    return int(np.ceil(n_rows * (spec.code_bytes + ID_BYTES)))


def settle(specs: Sequence[CompactSpec], sample: Optional[np.ndarray], target: float,
           metric: str = "inner_product") -> CompactSpec:
    """The spec the manifest records: the one asked for (int8: calibrated on `sample`), or
    the fastest of `specs` reaching `target` on `sample`, with what was measured."""
    if len(specs) == 1:
        return specs[0].calibrated(sample) if specs[0].needs_calibration else specs[0]
    if sample is None or len(sample) < 200:
        raise InputError(f"choosing a precision needs a sample of at least 200 vectors, got "
                         f"{0 if sample is None else len(sample)}; pass --precision explicitly")
    base, queries = cal.held_out_split(np.asarray(sample, np.float32))
    truth = cal.exact_neighbours(base, queries, 10)
    aim = min(target + cal.MARGIN, 1.0)
    measured = []
    for spec in specs:
        spec = spec.calibrated(base) if spec.needs_calibration else spec
        measured.append((spec,) + _measure(spec, base, queries, truth, aim, metric))
    reached = [m for m in measured if m[1] >= aim]
    best = min(reached, key=lambda m: m[3]) if reached else max(measured, key=lambda m: m[1])
    spec, recall, oversample, seconds = best
    record = {**specs[0].choice, "target": target, "rows": len(base), "queries": len(queries),
              "held_out": "sample rows not indexed", "rule": "fastest reaching the target, else the most accurate",
              "candidates": [_describe(s, r, o, t, specs[0].choice.get("rows_planned") or 0)
                             for s, r, o, t in measured]}
    return replace(spec, oversample=float(oversample), choice=record)


def _describe(spec: CompactSpec, recall: float, oversample: int, seconds: float, n_rows: int) -> dict:
    return {"precision": spec.precision, "dim": spec.dim, "bytes_per_vector": spec.code_bytes,
            "ram_bytes": ram_bytes(spec, n_rows) if n_rows else None, "oversample": oversample,
            "recall_at_10": round(recall, 4), "qps": round(1 / seconds, 1) if seconds else None}


def _measure(spec: CompactSpec, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, aim: float,
             metric: str) -> Tuple[float, int, float]:
    """(recall@10, the smallest oversampling factor reaching `aim` (else the best), seconds per query):
    the first stage once at the deepest oversampling, rescoring its prefixes, then the kept
    setting timed as a search does it (first stage at its depth + rescoring)."""
    index = first_stage(spec, base)
    keep_max = metric == "inner_product"
    xc = first_stage_queries(spec, queries)
    k = truth.shape[1]
    _, I_all = index.faiss.search(xc, spec.depth(k, len(base), max(OVERSAMPLES)))

    kept = vectors_of_stored(stored_vectors(base, spec), spec)  # what rescoring reads (float16 or int8 copy)

    def rows(r):
        return kept[r]

    best = (-1.0, OVERSAMPLES[-1])
    for factor in OVERSAMPLES:
        depth = spec.depth(k, len(base), factor)
        found = rescore(queries, I_all[:, :depth], rows, k, keep_max)[1] if spec.rescore else I_all[:, :k]
        r = cal.recall(found, truth)
        if r > best[0] + 1e-9:
            best = (r, factor)
        if r >= aim or not spec.rescore:
            break
    recall, factor = best
    depth = spec.depth(k, len(base), factor)

    def search():
        _, I = index.faiss.search(first_stage_queries(spec, queries), depth)
        if spec.rescore:
            rescore(queries, I, rows, k, keep_max)

    search()
    seconds = min(_timed(search) for _ in range(3)) / len(queries)
    return recall, factor, seconds


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def first_stage(spec: CompactSpec, base: np.ndarray):
    """An in-memory Flat first stage over `base` (row ids = positions) for measuring."""
    index = CompactIndex(spec, faiss_factory(spec.precision, "Flat"), faiss_metric("inner_product"))
    index.add_with_ids(base, np.arange(len(base), dtype=np.int64))
    return index


def tune_lists(spec: CompactSpec, factory: str, template, sample: np.ndarray, target: float,
               k: int = 10) -> Tuple[dict, dict]:
    """The fewest lists a binary IVF first stage (`template`, trained) must probe for the two
    stages (codes, then rescoring of ``oversample * k`` candidates) to reach `target` on
    held-out rows of `sample`: ({"nprobe": n}, what was measured for the manifest)."""
    import faiss

    base, queries = cal.held_out_split(np.asarray(sample, np.float32))
    truth = cal.exact_neighbours(base, queries, k)
    index = CompactIndex(spec, factory, faiss_metric("inner_product"), faiss.clone_binary_index(template))
    index.add_with_ids(base, np.arange(len(base), dtype=np.int64))
    xc, depth, aim = first_stage_queries(spec, queries), spec.depth(k, len(base)), min(target + cal.MARGIN, 1.0)
    kept = vectors_of_stored(stored_vectors(base, spec), spec)  # what rescoring reads
    nlist = int(template.nlist)
    recall, nprobe = 0.0, nlist
    for nprobe in [p for p in cal.NPROBES if p < nlist] + [nlist]:
        _, I = index.faiss.search(xc, depth, params=faiss.SearchParametersIVF(nprobe=nprobe))
        found = rescore(queries, I, lambda rows: kept[rows], k)[1] if spec.rescore else I[:, :k]
        recall = cal.recall(found, truth)
        if recall >= aim:
            break
    return {"nprobe": nprobe}, {"recall_at_10": round(recall, 4), "target": target, "queries": len(queries),
                                "rows": len(base), "held_out": "sample rows not indexed", "nprobe": nprobe}

