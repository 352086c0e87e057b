"""ANN recall@10 vs QPS on held-out queries: mmsearch `auto` (no parameters) against hand-swept
raw FAISS and hnswlib, on three differently shaped vector sets (benchmarks/vector_sets.py).

    python benchmarks/ann.py                              # gaussian, aniso at 200k x 768; minilm (100k x 384)
    python benchmarks/ann.py --sets minilm --peers        # + faiss HNSW32 and hnswlib (M 32, efC 200)

Per set, with one thread count for every library (default: the cores this process may use)
and the same 1000 held-out queries (rows never indexed) as one batch, QPS the best of 3 timed
runs after a warm-up:
- `mmsearch auto`: `index_vectors(out, xb, ids)` with no parameters; its build-time choice,
  the recall it recorded, and recall/QPS of its defaults on the held-out queries;
- `same file`: one single-shard index file searched by mmsearch (`search_vectors`) and by raw
  faiss (`index.search`) with the same SearchParameters, point by point, the two timed back to
  back in alternating order: a fair overhead measurement, not a race between different sweeps;
- hand-swept faiss IVF-PQ + refine (nprobe x k_factor) at auto's nlist, half and twice it, and
  with --peers faiss HNSW32 and hnswlib (efConstruction 200, efSearch swept): the best QPS each
  reaches at recall 0.95, and auto's QPS over the best of them.
Writes results/ann_<set>_<n>x<d>.{json,md,png}.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, best_time, environment, ground_truth, plot_curves, recall_at, save  # noqa: E402
from vector_sets import vector_set  # noqa: E402

K = 10
THREADS = len(os.sched_getaffinity(0))
NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
K_FACTORS = (4, 8, 16, 32, 64)
EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def auto_method(xb, xq, gt, work):
    """What a user gets: `auto` with no parameters, searched with its build-time defaults."""
    from mmsearch.indexer.vectors import index_vectors
    from mmsearch.query import open_index

    t0 = time.perf_counter()
    m = index_vectors(work / "auto", xb, [str(i) for i in range(len(xb))])
    build = time.perf_counter() - t0
    idx = open_index(work / "auto")
    found = idx.search_vectors(xq, K)[1]
    qps = len(xq) / best_time(lambda: idx.search_vectors(xq, K))
    cal = dict(m.faiss.calibration)
    return {"method": "mmsearch auto (no parameters)", "factory": m.faiss.factory, "build_s": round(build, 1),
            "shards": len(m.shards), "defaults": dict(m.faiss.search_params), "calibration": cal,
            "recall": round(recall_at(found, gt), 4), "qps": round(qps, 1),
            "points": [(recall_at(found, gt), qps, dict(m.faiss.search_params))]}


def same_file(auto, xb, xq, gt, work):
    """One single-shard file (auto's own when it has one shard), searched by mmsearch and by
    raw faiss with identical parameters."""
    import faiss

    from mmsearch.indexer.calibrate import search_parameters
    from mmsearch.indexer.vectors import index_vectors
    from mmsearch.query import open_index

    factory, defaults, out = auto["factory"], auto["defaults"], work / "auto"
    if auto["shards"] > 1:
        out = work / "single"
        index_vectors(out, xb, [str(i) for i in range(len(xb))], index=factory, shard_size=len(xb),
                      store_vectors=False)
    idx = open_index(out)
    raw = faiss.read_index(str(next((out / "shards").rglob("index.faiss"))))
    pairs = []
    for i, params in enumerate(_around(factory, defaults)):
        sp = search_parameters(raw, params)
        mm_fn, raw_fn = (lambda: idx.search_vectors(xq, K, params=params)), (lambda: raw.search(xq, K, params=sp))
        order = [("mmsearch", mm_fn), ("faiss", raw_fn)][:: 1 if i % 2 == 0 else -1]
        secs = {name: best_time(fn) for name, fn in order}
        r_mm, r_raw = recall_at(mm_fn()[1], gt), recall_at(raw_fn()[1], gt)
        pairs.append({"params": params, "recall_mmsearch": round(r_mm, 4), "recall_faiss": round(r_raw, 4),
                      "qps_mmsearch": round(len(xq) / secs["mmsearch"], 1),
                      "qps_faiss": round(len(xq) / secs["faiss"], 1),
                      "ratio": round(secs["faiss"] / secs["mmsearch"], 3)})
    return {"factory": factory, "threads": THREADS, "pairs": pairs}


def _around(factory, defaults):
    """The defaults and a few settings either side of them."""
    if "efSearch" in defaults:
        ef = defaults["efSearch"]
        return [defaults] + [{"efSearch": e} for e in (ef // 2, ef * 2) if e >= K]
    if "nprobe" in defaults:
        out = [defaults, {**defaults, "nprobe": defaults["nprobe"] * 2}]
        return out + ([{**defaults, "k_factor": defaults["k_factor"] * 2}] if "k_factor" in defaults else [])
    return [{}]


def _sweep(index, xq, gt, grid):
    """(recall, qps, params) along each list of `grid`, stopping a list once recall passes 0.99."""
    from mmsearch.indexer.calibrate import search_parameters

    points = []
    for line in grid:
        for params in line:
            sp = search_parameters(index, params)
            r = recall_at(index.search(xq, K, params=sp)[1], gt)
            points.append((r, len(xq) / best_time(lambda: index.search(xq, K, params=sp)), params))
            if r >= 0.99:
                break
    return points


def faiss_ivf(xb, xq, gt, nlist):
    import faiss

    from mmsearch.indexer.planner import _pq_m

    factory = f"IVF{nlist},PQ{_pq_m(xb.shape[1])}x4fs,RFlat"
    t0 = time.perf_counter()
    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(xb[: min(len(xb), 100 * nlist)])
    index.add(xb)
    build = time.perf_counter() - t0
    grid = [[{"nprobe": p, "k_factor": f} for p in NPROBES if p <= nlist] for f in K_FACTORS]
    return {"method": "faiss, hand-swept", "factory": factory, "build_s": round(build, 1),
            "points": _sweep(index, xq, gt, grid)}


def faiss_hnsw(xb, xq, gt):
    from mmsearch.indexer.planner import empty_index

    t0 = time.perf_counter()
    index = empty_index("HNSW32", xb.shape[1])    # efConstruction 200, as hnswlib below
    index.add(xb)
    build = time.perf_counter() - t0
    return {"method": "faiss, hand-swept", "factory": "HNSW32 (efC 200)", "build_s": round(build, 1),
            "points": _sweep(index, xq, gt, [[{"efSearch": e} for e in EFS]])}


def hnswlib_method(xb, xq, gt):
    import hnswlib

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=xb.shape[1])
    index.init_index(max_elements=len(xb), M=32, ef_construction=200)
    index.add_items(xb, num_threads=THREADS)
    build = time.perf_counter() - t0
    points = []
    for ef in EFS:
        index.set_ef(max(ef, K))
        labels, _ = index.knn_query(xq, k=K, num_threads=THREADS)
        secs = best_time(lambda: index.knn_query(xq, k=K, num_threads=THREADS))
        points.append((recall_at(labels, gt), len(xq) / secs, {"ef": ef}))
        if points[-1][0] >= 0.99:
            break
    return {"method": "hnswlib (M 32, efC 200)", "factory": "", "build_s": round(build, 1), "points": points}


def best_at(points, target=0.95):
    ok = [qps for r, qps, _ in points if r >= target]
    return round(max(ok), 1) if ok else None


def pareto(points):
    return [p for p in points if not any(o[0] >= p[0] and o[1] > p[1] or o[0] > p[0] and o[1] >= p[1]
                                         for o in points)]


def run_set(name, n, d, n_queries, peers, work):
    xb, xq = vector_set(name, n, d, n_queries)
    gt = ground_truth(xb, xq, K)
    auto = auto_method(xb, xq, gt, work)
    fair = same_file(auto, xb, xq, gt, work)
    nlist = int(auto["factory"].split(",")[0][3:]) if auto["factory"].startswith("IVF") else 1024
    methods = [auto] + [faiss_ivf(xb, xq, gt, nl) for nl in (nlist // 2, nlist, nlist * 2)]
    if peers:
        methods += [faiss_hnsw(xb, xq, gt), hnswlib_method(xb, xq, gt)]
    for m in methods:
        m["qps_at_recall_0.95"] = best_at(m["points"])
        m["points"] = [(round(r, 4), round(q, 1), p) for r, q, p in m["points"]]
    return {"set": name, "n": len(xb), "d": xb.shape[1], "queries": len(xq), "methods": methods, "same_file": fair,
            "auto_vs_best_hand_swept": versus_best(methods)}


def versus_best(methods):
    """auto's QPS at recall 0.95 over the best hand-swept method's (any library, any nlist)."""
    auto, others = methods[0]["qps_at_recall_0.95"], [m for m in methods[1:] if m["qps_at_recall_0.95"]]
    if not auto or not others:
        return None
    best = max(others, key=lambda m: m["qps_at_recall_0.95"])
    return {"ratio": round(auto / best["qps_at_recall_0.95"], 3), "best": f"{best['method']} {best['factory']}"}


def markdown(res, env) -> str:
    auto = res["methods"][0]
    cal = auto["calibration"]
    lines = [f"### {res['set']}: {res['n']:,} x {res['d']}, {res['queries']} held-out queries "
             f"({env['date']}, {env['threads']} thread(s))\n",
             f"`auto` chose {auto['factory']} with {auto['defaults']} (built in {auto['build_s']} s, "
             f"{auto['shards']} shard(s)); it recorded recall@10 {cal.get('recall_at_10', 'exact')} on its own "
             f"held-out sample rows and reaches **{auto['recall']}** on these queries at {auto['qps']} QPS.\n",
             "| method | index | build s | QPS at recall@10 >= 0.95 | best recall@10 |", "|---|---|---|---|---|"]
    for m in res["methods"]:
        best = max(r for r, _, _ in m["points"])
        lines.append(f"| {m['method']} | {m['factory']} | {m['build_s']} | {m['qps_at_recall_0.95'] or 'not reached'} "
                     f"| {best} |")
    vs = res.get("auto_vs_best_hand_swept")
    if vs:
        lines += ["", f"`auto` / the best hand-swept configuration ({vs['best']}) at recall@10 >= 0.95: "
                      f"**{vs['ratio']}x**."]
    sf = res["same_file"]
    lines += ["", f"Same file ({sf['factory']}, one shard, {sf['threads']} thread(s), identical parameters, "
              "timed back to back):", "", "| params | recall mmsearch / faiss | QPS mmsearch | QPS faiss | ratio |",
              "|---|---|---|---|---|"]
    lines += [f"| {p['params']} | {p['recall_mmsearch']} / {p['recall_faiss']} | {p['qps_mmsearch']} | "
              f"{p['qps_faiss']} | {p['ratio']} |" for p in sf["pairs"]]
    return "\n".join(lines) + "\n"


def main():
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="gaussian,aniso,minilm", help="vector sets (default: %(default)s)")
    ap.add_argument("--n", type=int, default=200_000, help="rows of the synthetic sets (minilm: 100k)")
    ap.add_argument("--d", type=int, default=768, help="dimension of the synthetic sets (minilm: 384)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--peers", action="store_true", help="also faiss HNSW32 and hnswlib (slow to build)")
    args = ap.parse_args()
    import faiss

    THREADS = args.threads
    faiss.omp_set_num_threads(THREADS)
    for name in args.sets.split(","):
        env = {**environment(), "threads": THREADS}
        n = 100_000 if name == "minilm" else args.n
        work = Path(tempfile.mkdtemp(prefix="mmsearch-ann-"))
        try:
            res = run_set(name, n, args.d, args.queries, args.peers, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        stem = f"ann_{name}_{res['n']}x{res['d']}"
        curves = {f"{m['method']} {m['factory']}": pareto([(r, q) for r, q, _ in m["points"]]) for m in res["methods"]}
        plot_curves(RESULTS / f"{stem}.png", curves, f"{name}: recall@10 vs QPS, {res['n']:,} x {res['d']}, "
                                                     f"{THREADS} thread(s)")
        md = markdown(res, env)
        save(stem, {"environment": env, "k": K, **res}, md + f"\n![{stem}]({stem}.png)\n")
        print(md, flush=True)


if __name__ == "__main__":
    main()
