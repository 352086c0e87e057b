"""Compact vectors (issue #25): Matryoshka truncation x storage precision x rescoring, measured.

    python benchmarks/compact.py            # 200k x 1024 (about 15 minutes on 2 cores)
    python benchmarks/compact.py --quick    # 20k x 256

The vectors. No image-text model here can be trained to 1024 dimensions on 2 CPU cores
(the tiny model trained from scratch is 192-d and took 22 minutes), so the Matryoshka
structure comes from the same loss in a cheaper place: items are drawn from an anisotropic
mixture in 1,024-d (`vector_sets.anisotropic_mixture`), each seen twice through noise (a
"document" view and a "query" view), and a 1024 x 1024 linear adapter is trained on held-apart
items with the trainer's MRL loss (`mmsearch.train.matryoshka`, the loss summed over prefixes
64..1024) to embed both views. The corpus is the adapted document views of `n` items; the
queries are the adapted query views of 1,000 of them. So truncation is meaningful (the
adapter puts the most useful directions first), and "task R@1" (a query finds its own item)
is a downstream metric in the spirit of t2i R@1.

Every index is written by the real writer (`mmsearch.indexer.vectors.index_vectors`: shards,
manifest, vectors.npy, store) and measured in a fresh process after `open_index`: resident
memory (VmRSS, split into anonymous and file-backed pages, and the part that is vectors.npy's
memory map) right after opening and after the timed searches; recall@10 against exact float32
search over the same vectors (faiss.knn); QPS of `search_vectors` on the 1,000 queries as one
batch (best of 3, all threads); the cost of rescoring per query (with rescoring minus without).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, resident_memory, save  # noqa: E402

K = 10
OVERSAMPLES = (2, 4, 8, 16, 32)
SIZES = (64, 128, 256, 512)


def make_vectors(n: int, d: int, n_queries: int, train_items: int, seed: int = 0):
    """(corpus (n, d), queries (n_queries, d), query item rows, adapter facts), float32 unit rows."""
    from vector_sets import anisotropic_mixture

    from mmsearch.train.matryoshka import adapt, fit_linear_adapter

    rng = np.random.default_rng(seed)
    items = anisotropic_mixture(n + train_items, d, seed=seed + 1)
    noise = 0.9 / np.sqrt(d)

    def view(x):
        y = x + noise * rng.standard_normal(x.shape).astype(np.float32)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    t0 = time.perf_counter()
    train = items[n:]
    sizes = tuple(s for s in SIZES if s < d)
    weight = fit_linear_adapter(view(train), view(train), sizes=sizes, steps=300 if d >= 512 else 200,
                                batch_size=1024, lr=1e-3)
    seconds = time.perf_counter() - t0
    docs = items[:n]
    asked = np.sort(rng.choice(n, n_queries, replace=False))
    raw, raw_queries = view(docs), view(docs[asked])
    facts = {"train_items": train_items, "sizes": list(sizes), "seconds": round(seconds, 1),
             "truncated_first_stage_recall": {"with_adapter": {}, "without_adapter": {}}}
    corpus, queries = adapt(raw, weight), adapt(raw_queries, weight)
    for label, (x, q) in (("with_adapter", (corpus, queries)), ("without_adapter", (raw, raw_queries))):
        facts["truncated_first_stage_recall"][label] = _truncation_recall(x, q)
    return corpus, queries, asked, facts


def _truncation_recall(x: np.ndarray, q: np.ndarray) -> dict:
    """recall@10 of exact search on the first d/4 and d/2 components (re-normalised) against exact
    search on all of them: how much a truncation alone keeps (Matryoshka structure, or none)."""
    import faiss

    from mmsearch.index_format import first_stage_vectors

    truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    out = {}
    for dim in (x.shape[1] // 4, x.shape[1] // 2):
        found = faiss.knn(first_stage_vectors(q, dim), first_stage_vectors(x, dim), K,
                          metric=faiss.METRIC_INNER_PRODUCT)[1]
        out[str(dim)] = round(float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])), 4)
    return out


def settings(d: int, n: int):
    """(name, precision, dim, first-stage index) of each index; float32 at full size (Flat) is the
    exact baseline. The binary IVF has about 4 * sqrt(n) lists (the planner's rule for IVF)."""
    half, quarter = d // 2, d // 4
    lists = f"IVF{2 ** round(np.log2(4 * np.sqrt(n)))}"
    return [("float32", "float32", d, "Flat"), ("float16", "float16", d, "Flat"), ("int8", "int8", d, "Flat"),
            ("binary", "binary", d, "Flat"), (f"binary {lists}", "binary", d, lists),
            (f"float32@{half}", "float32", half, "Flat"), (f"float32@{quarter}", "float32", quarter, "Flat"),
            (f"int8@{quarter}", "int8", quarter, "Flat"), (f"binary@{half}", "binary", half, "Flat")]


# --- the measuring child ----------------------------------------------------------------------

def child(index_dir: str, data: str) -> None:
    """Open the index, measure memory, time searches; print one JSON line."""
    import faiss  # noqa: F401  (imported before the baseline reading, as the library would)

    from mmsearch.query import open_index

    arrays = np.load(data)
    xq, truth, asked = arrays["queries"], arrays["truth"], arrays["asked"]
    before = resident_memory()
    index = open_index(index_dir)
    index.search_vectors(xq[:1], K)  # the first call reads the manifest's view lazily
    opened = resident_memory()
    compact = index.manifest.compact
    modes = [("exact", {})] if compact is None else \
        [("off", {"rescore": False})] + [(f"x{o}", {"oversample": o}) for o in OVERSAMPLES]
    results = {}
    for name, params in modes:
        found = index.search_vectors(xq, K, params=params)[1]
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            index.search_vectors(xq, K, params=params)
            best = min(best, time.perf_counter() - t0)
        recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
        results[name] = {"recall_at_10": round(recall, 4), "qps": round(len(xq) / best, 1),
                         "ms_per_query": round(1000 * best / len(xq), 3),
                         "task_r_at_1": round(float(np.mean(found[:, 0] == asked)), 4)}
    searched = resident_memory()
    print(json.dumps({"before": before, "opened": opened, "searched": searched, "modes": results,
                      "manifest_compact": None if compact is None else compact.to_dict(),
                      "first_stage": {"factory": index.manifest.faiss.factory,
                                      "search_params": dict(index.manifest.faiss.search_params)}}))


# --- the run ------------------------------------------------------------------------------------

def measure(index_dir: Path, data: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(index_dir), str(data)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build(out: Path, corpus: np.ndarray, precision: str, dim: int, index: str) -> float:
    from mmsearch.indexer.vectors import index_vectors

    full = corpus.shape[1]
    t0 = time.perf_counter()
    index_vectors(out, corpus, [str(i) for i in range(len(corpus))], index=index, shard_size=len(corpus),
                  precision=None if precision == "float32" and dim == full else precision,
                  dim=dim if dim < full else None, oversample=4)
    return time.perf_counter() - t0


def row_of(name: str, precision: str, dim: int, full: int, m: dict, build_seconds: float) -> dict:
    code = {"float32": 4.0, "float16": 2.0, "int8": 1.0, "binary": 0.125}[precision] * dim
    per_vector = code + 8   # codes + the int64 id
    opened, searched, before = m["opened"], m["searched"], m["before"]
    modes = m["modes"]
    off = modes.get("off")
    return {"name": name, "precision": precision, "dim": dim, "bytes_per_vector": per_vector,
            "smaller_than_float32": round((4 * full + 8) / per_vector, 1), "build_seconds": round(build_seconds, 1),
            "rss_after_open": opened["VmRSS"] - before["VmRSS"],
            "rss_after_open_anon": opened["RssAnon"] - before["RssAnon"],
            "rss_after_search": searched["VmRSS"] - before["VmRSS"],
            "rss_after_search_anon": searched["RssAnon"] - before["RssAnon"],
            "vectors_npy_resident_after_search": searched["mapped_vectors.npy"],
            "index_faiss_resident_after_search": searched["mapped_index.faiss"],
            "modes": modes,
            "rescore_ms_per_query": {k: round(v["ms_per_query"] - off["ms_per_query"], 3)
                                     for k, v in modes.items() if off and k != "off"},
            "compact": m["manifest_compact"], "first_stage": m["first_stage"]}


def markdown(result: dict) -> str:
    mb = 1 << 20
    lines = ["| setting | bytes/vector (x smaller) | RSS after open (anon) MiB | RSS after search (anon; vectors.npy) MiB | "
             "rescoring | recall@10 | task R@1 | QPS | rescoring ms/query |", "|" + "---|" * 9]
    for r in result["rows"]:
        for mode, v in r["modes"].items():
            resc = {"exact": "n/a (exact)", "off": "off"}.get(mode, f"on, oversample {mode[1:]}")
            lines.append(
                f"| {r['name']} | {r['bytes_per_vector']:g} ({r['smaller_than_float32']}x) | "
                f"{r['rss_after_open'] / mb:.1f} ({r['rss_after_open_anon'] / mb:.1f}) | "
                f"{r['rss_after_search'] / mb:.1f} ({r['rss_after_search_anon'] / mb:.1f}; "
                f"{r['vectors_npy_resident_after_search'] / mb:.1f}) | {resc} | {v['recall_at_10']} | "
                f"{v['task_r_at_1']} | {v['qps']:,.0f} | {r['rescore_ms_per_query'].get(mode, '-')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("INDEX", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    n, d = (20_000, 256) if args.quick else (200_000, 1024)
    t0 = time.perf_counter()
    corpus, queries, asked, adapter = make_vectors(n, d, 1000, train_items=30_000)
    import faiss

    truth = faiss.knn(queries, corpus, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    work = Path(tempfile.mkdtemp(prefix="mmsearch-compact-"))
    rows = []
    try:
        data = work / "queries.npz"
        np.savez(data, queries=queries, truth=truth, asked=asked)
        for name, precision, dim, index in settings(d, n):
            out = work / name.replace("@", "_").replace(" ", "_")
            seconds = build(out, corpus, precision, dim, index)
            rows.append(row_of(name, precision, dim, d, measure(out, data), seconds))
            print(json.dumps({k: rows[-1][k] for k in ("name", "bytes_per_vector", "rss_after_search")}),
                  {m: (v["recall_at_10"], v["qps"]) for m, v in rows[-1]["modes"].items()}, flush=True)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"environment": environment(), "rows_indexed": n, "dim": d, "queries": len(queries), "k": K,
              "vectors": "anisotropic mixture, two noisy views per item, MRL-trained linear adapter (see docstring)",
              "adapter": adapter, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    name = "compact_quick" if args.quick else f"compact_{n}x{d}"
    save(name, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
