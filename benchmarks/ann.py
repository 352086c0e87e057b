"""ANN recall@10 vs QPS: mmsearch (auto, HNSW, IVF-PQ + refine) against raw FAISS, hnswlib,
usearch (and LanceDB when installed), all measured in the same run on the same vectors.

    python benchmarks/ann.py --quick          # 100k x 768
    python benchmarks/ann.py                  # 100k and 1M, dim 768 and 1536
    taskset -c 0 python benchmarks/ann.py --sizes 1000000x768 --threads 1

Vectors are clustered synthetic embeddings; ground truth by exact search. Every
method builds and searches with the same number of threads (default: the cores
this process may use), the same 1000 queries as one batch; QPS is the best of 3
timed runs after a warm-up. Writes results/ann_quick.* (quick) or one
results/ann_NxD.{json,md,png} per size (full).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (RESULTS, best_time, clustered, environment, ground_truth, plot_curves, raw_faiss_params,  # noqa
                    recall_at, save)

K = 10
THREADS = len(os.sched_getaffinity(0))  # set from --threads in main(); every library uses this many
NPROBES = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
K_FACTORS = (8, 32, 128)   # refine candidates per result: more vectors need more (see planner.tune_filled)
EFS = (16, 32, 64, 128, 256, 512)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def mmsearch_method(name, factory, xb, xq, gt, work, sweep):
    from mmsearch.indexer.vectors import index_vectors
    from mmsearch.query import open_index

    out = work / name
    t0 = time.perf_counter()
    m = index_vectors(out, xb, [str(i) for i in range(len(xb))], index=factory, shard_size=len(xb),
                      store_vectors=False)
    build = time.perf_counter() - t0
    idx = open_index(out)
    _, I = idx.search_vectors(xq, K)  # the defaults tuned at build time: what a user gets without params
    defaults = {"params": dict(m.faiss.search_params), "recall": round(recall_at(I, gt), 4),
                "qps": round(len(xq) / best_time(lambda: idx.search_vectors(xq, K)), 1)}
    points = [(defaults["recall"], defaults["qps"], defaults["params"])] if defaults["params"] else []
    for params in sweep(m.faiss.factory):
        _, I = idx.search_vectors(xq, K, params=params)
        secs = best_time(lambda: idx.search_vectors(xq, K, params=params))
        points.append((recall_at(I, gt), len(xq) / secs, params))
    files = [f for f in (out / "shards").rglob("index.faiss")] + list(out.glob("trained.faiss"))
    size = sum(f.stat().st_size for f in files)
    return {"method": f"mmsearch {name}", "factory": m.faiss.factory, "build_s": round(build, 2), "defaults": defaults,
            "bytes_per_vector": round(size / len(xb), 1), "points": points, "index_file": str(files[0])}


def faiss_raw(entry, xq, gt, sweep):
    """The same shard file searched with faiss directly (no mmsearch layer)."""
    import faiss

    index = faiss.read_index(entry["index_file"])
    points = []
    defaults = (entry.get("defaults") or {}).get("params")
    for params in ([defaults] if defaults else []) + sweep(entry["factory"]):  # mmsearch's points, the same params
        sp = raw_faiss_params(entry["factory"], params)
        _, I = index.search(xq, K, params=sp)
        secs = best_time(lambda: index.search(xq, K, params=sp))
        points.append((recall_at(I, gt), len(xq) / secs, params))
    return {"method": f"faiss (same file as mmsearch {entry['method'].split()[-1]})", "factory": entry["factory"],
            "build_s": entry["build_s"], "bytes_per_vector": entry["bytes_per_vector"], "points": points}


def ivf_sweep(factory):
    nlist = int(factory.split(",")[0][3:])
    return [{"nprobe": p, "k_factor": f} for f in K_FACTORS for p in NPROBES if p <= nlist]


def hnsw_sweep(factory):
    return [{"efSearch": e} for e in EFS]


def auto_sweep(factory):
    return hnsw_sweep(factory) if "HNSW" in factory else ivf_sweep(factory) if "IVF" in factory else [{}]


def hnswlib_method(xb, xq, gt, work):
    import hnswlib

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=xb.shape[1])
    index.init_index(max_elements=len(xb), M=16, ef_construction=100)
    index.add_items(xb, num_threads=THREADS)
    build = time.perf_counter() - t0
    index.save_index(str(work / "hnswlib.bin"))
    points = []
    for ef in EFS:
        index.set_ef(max(ef, K))
        labels, _ = index.knn_query(xq, k=K, num_threads=THREADS)
        secs = best_time(lambda: index.knn_query(xq, k=K, num_threads=THREADS))
        points.append((recall_at(labels, gt), len(xq) / secs, {"ef": ef}))
    return {"method": "hnswlib (M=16, efC=100)", "build_s": round(build, 2),
            "bytes_per_vector": round((work / "hnswlib.bin").stat().st_size / len(xb), 1), "points": points}


def usearch_method(xb, xq, gt, work):
    from usearch.index import Index

    t0 = time.perf_counter()
    index = Index(ndim=xb.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=100)
    index.add(None, xb, threads=THREADS)
    build = time.perf_counter() - t0
    index.save(str(work / "usearch.bin"))
    points = []
    for ef in EFS:
        index.expansion_search = ef
        keys = index.search(xq, K, threads=THREADS).keys
        secs = best_time(lambda: index.search(xq, K, threads=THREADS))
        points.append((recall_at(keys, gt), len(xq) / secs, {"expansion_search": ef}))
    return {"method": "usearch (M=16, efC=100)", "build_s": round(build, 2),
            "bytes_per_vector": round((work / "usearch.bin").stat().st_size / len(xb), 1), "points": points}


def lancedb_method(xb, xq, gt, work):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(work / "lance"))
    table = pa.table({"id": range(len(xb)), "vector": pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()),
                                                                                      xb.shape[1])})
    t0 = time.perf_counter()
    tbl = db.create_table("v", table)
    tbl.create_index(metric="dot", num_partitions=256, num_sub_vectors=xb.shape[1] // 16)
    build = time.perf_counter() - t0
    points = []
    for nprobes in (8, 16, 32, 64):
        def run():
            return [tbl.search(q).metric("dot").nprobes(nprobes).refine_factor(8).limit(K).to_arrow()["id"]
                    .to_pylist() for q in xq[:200]]
        ids = run()
        secs = best_time(run, repeat=1)
        points.append((recall_at(ids, gt[:200]), 200 / secs, {"nprobes": nprobes, "refine_factor": 8}))
    return {"method": "lancedb (IVF_PQ, one query at a time)", "build_s": round(build, 2),
            "bytes_per_vector": round(dir_bytes(work / "lance") / len(xb), 1), "points": points}


def pareto(points):
    """The points no other point beats on both recall and QPS (a sweep over two knobs)."""
    return [p for p in points if not any(o[0] >= p[0] and o[1] > p[1] or o[0] > p[0] and o[1] >= p[1]
                                         for o in points)]


def best_at(points, target=0.95):
    ok = [qps for r, qps, _ in points if r >= target]
    return round(max(ok), 1) if ok else None


def run_size(n, d, n_queries, work, auto_only=False):
    xb, xq = clustered(n, d, n_queries, seed=n + d)
    gt = ground_truth(xb, xq, K)
    methods = []
    auto = mmsearch_method("auto", "auto", xb, xq, gt, work, auto_sweep)
    methods.append(auto)
    if auto_only:
        return _finish(methods)
    hnsw = mmsearch_method("HNSW32", "HNSW32", xb, xq, gt, work, hnsw_sweep)
    methods.append(hnsw)
    ivf_factory = f"IVF{1024 if n <= 200_000 else 4096},PQ{d // 4}x4fs,RFlat"
    ivf = auto if auto["factory"] == ivf_factory else mmsearch_method("IVF-PQ+refine", ivf_factory, xb, xq, gt,
                                                                      work, ivf_sweep)
    if ivf is not auto:
        methods.append(ivf)
    methods += [faiss_raw(hnsw, xq, gt, hnsw_sweep), faiss_raw(ivf, xq, gt, ivf_sweep)]
    for fn in (hnswlib_method, usearch_method, lancedb_method):
        try:
            methods.append(fn(xb, xq, gt, work))
        except ImportError as e:
            methods.append({"method": fn.__name__.replace("_method", ""), "skipped": f"not installed ({e.name})"})
    return _finish(methods)


def _finish(methods):
    for m in methods:
        m.pop("index_file", None)
        if "points" in m:
            m["qps_at_recall_0.95"] = best_at(m["points"])
            m["points"] = [(round(r, 4), round(q, 1), p) for r, q, p in m["points"]]
    return methods


def with_peers_of(name, auto, env):
    """The size's saved methods with `auto` replaced by a new measurement (dated)."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--auto-only: no earlier results at {path} to update; run without it first")
    saved = json.loads(path.read_text())["sizes"][0]["methods"]
    auto["remeasured"] = env["date"]
    return [auto if m["method"] == auto["method"] else m for m in saved]


def markdown(n, d, methods) -> str:
    lines = [f"### {n:,} x {d}\n", "| method | index | build s | bytes/vector | QPS at recall@10 >= 0.95 | "
             "best recall@10 | build-time defaults: recall, QPS |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        if "skipped" in m:
            lines.append(f"| {m['method']} | - | - | - | {m['skipped']} | - | - |")
            continue
        best = max(r for r, _, _ in m["points"])
        lines.append(f"| {m['method']} | {m.get('factory', '')} | {m['build_s']} | {m['bytes_per_vector']} | "
                     f"{m['qps_at_recall_0.95'] or 'not reached'} | {best} | {defaults_cell(m)} |")
    return "\n".join(lines) + "\n"


def defaults_cell(m) -> str:
    dflt = m.get("defaults")
    return f"{dflt['recall']}, {dflt['qps']} ({dflt['params']})" if dflt and dflt["params"] else "-"


FULL_SIZES = "100000x768,100000x1536,1000000x768,1000000x1536"


def parse_sizes(text):
    try:
        return [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes: expected NxD[,NxD...], e.g. 1000000x768; got {text!r}")


def main():
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k x 768 only, written to results/ann_quick.*")
    ap.add_argument("--sizes", default=FULL_SIZES, help="full mode: NxD sizes, comma-separated (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=THREADS, help="threads for every library (default: %(default)s)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--auto-only", action="store_true",
                    help="re-measure only mmsearch auto (e.g. after a planner change) and replace it in the "
                         "size's existing results; the peers' figures are kept")
    args = ap.parse_args()
    import faiss

    THREADS = args.threads
    faiss.omp_set_num_threads(THREADS)
    sizes = [(100_000, 768)] if args.quick else parse_sizes(args.sizes)
    for n, d in sizes:
        name = "ann_quick" if args.quick else f"ann_{n}x{d}"
        result = {"environment": {**environment(), "threads": THREADS}, "k": K, "queries": args.queries, "sizes": []}
        env = result["environment"]
        work = Path(tempfile.mkdtemp(prefix="mmsearch-ann-"))
        try:
            methods = run_size(n, d, args.queries, work, args.auto_only)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if args.auto_only:
            methods = with_peers_of(name, methods[0], env)
        result["sizes"].append({"n": n, "d": d, "methods": methods})
        curves = {m["method"]: pareto([(r, q) for r, q, _ in m["points"]]) for m in methods if "points" in m}
        plot_curves(RESULTS / f"{name}.png", curves, f"recall@10 vs QPS, {n:,} x {d}, {THREADS} thread(s)")
        md = (f"## ANN benchmark ({env['date']}, {env['cpu']}, {THREADS} of {env['cores']} cores)\n\n"
              f"{markdown(n, d, methods)}\n![ann {n}x{d}]({name}.png)\n")
        save(name, result, md)
        print(md, flush=True)


if __name__ == "__main__":
    main()
