"""Shared benchmark helpers: synthetic clustered vectors, ground truth, timers, environment, plots."""
from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

RESULTS = Path(__file__).parent / "results"


def clustered(n: int, d: int, n_queries: int, seed: int = 0, clusters: int = 1000, spread: float = 0.6):
    """Normalised points around random cluster centres (a stand-in for real embeddings,
    which cluster), and queries drawn from the same distribution but not from the base."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)

    def draw(m):
        out = np.empty((m, d), dtype=np.float32)
        for start in range(0, m, 100_000):
            stop = min(start + 100_000, m)
            c = centres[rng.integers(0, clusters, stop - start)]
            out[start:stop] = c + spread * rng.standard_normal((stop - start, d)).astype(np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def ground_truth(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    import faiss

    _, gt = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return gt


def recall_at(found: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean overlap of the top k with the true top k (tie-tolerant enough for float data)."""
    return float(np.mean([len(set(f[:k]) & set(g[:k])) / k for f, g in zip(found, gt)]))


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def environment() -> Dict[str, object]:
    import faiss

    return {"date": time.strftime("%Y-%m-%d"), "cpu": _cpu(), "cores": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(), "python": platform.python_version(), "versions": versions()}


def versions() -> Dict[str, str]:
    """Installed versions of the libraries the benchmarks compare or run on."""
    from importlib import metadata

    out = {}
    for dist in ("numpy", "faiss-cpu", "faiss-gpu", "hnswlib", "usearch", "lancedb", "torch", "transformers",
                 "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save(name: str, result: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)


def plot_curves(path: Path, curves: Dict[str, List[tuple]], title: str) -> None:
    """Recall@10 (x) against QPS (y, log) per method."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, points in curves.items():
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries / s (log)")
    ax.set_yscale("log")
    ax.axvline(0.95, color="grey", lw=0.8, ls="--")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def raw_faiss_params(factory: str, knobs: dict):
    """faiss search parameters for `knobs` (efSearch, or nprobe [+ k_factor]) on an index
    built from `factory`; None for an index without knobs (Flat)."""
    import faiss

    from mmsearch.indexer.planner import has_refine

    if "HNSW" in factory:
        return faiss.SearchParametersHNSW(efSearch=knobs["efSearch"])
    if "nprobe" not in knobs:
        return None
    ivf = faiss.SearchParametersIVF(nprobe=knobs["nprobe"])
    if has_refine(factory):
        return faiss.IndexRefineSearchParameters(k_factor=knobs["k_factor"], base_index_params=ivf)
    return ivf


_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")  # a mapping's header line in /proc/self/smaps


def resident_memory(files=("vectors.npy", "index.faiss")) -> Dict[str, int]:
    """This process's VmRSS, RssAnon and RssFile in bytes, and the resident pages of the
    mappings of each file named in `files` (as ``mapped_<name>``)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    maps = dict.fromkeys(files, 0)
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if _MAPPING.match(line):
            parts = line.split()
            current = next((k for k in maps if len(parts) > 5 and parts[-1].endswith(k)), None)
        elif current and line.startswith("Rss:"):
            maps[current] += int(line.split()[1]) * 1024
    out.update({f"mapped_{k}": v for k, v in maps.items()})
    return out

