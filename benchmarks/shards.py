"""What splitting an index into shards costs at search time: 4 shards against 1 on the same vectors.

    python benchmarks/shards.py [--n 100000] [--dim 256] [--shards 4] [--quick]

The same clustered unit vectors (seeded) are written as one shard and as --shards
shards through `mmsearch.index_format`, opened with `mmsearch.query.open_index`,
and searched through `Index.search_vectors` on the same threads (faiss's OpenMP
default: one per core; --threads 2 1 also measures one thread, where the
ratio is the work sharding adds). Reported per index type:

- exact (Flat): QPS of a batch of 1000 queries (best of --repeat, the two indexes'
  rounds interleaved so load from other processes hits both alike), the median
  latency of single-query searches (each index in blocks of its own, interleaved), and
  whether both return the same ids;
- ANN (HNSW, IVF with refine): the knob swept on both indexes, recall@10 against
  exact search at every point, and at each recall target the QPS of the cheapest
  setting that reaches it (batch and single query): shards compared at equal recall.

The ratio is sharded / single-shard QPS (1 = shards cost nothing). IVF shards are
joined into one index at open (`mmsearch.query.joined`); the rows "shards one by one"
measure the same shards opened with `join_shards=False`, as they were searched before.
HNSW is indexed through the shard writer (`mmsearch.indexer.index_vectors`) at a shard
size of n/1 and n/--shards: a graph's shards grow into one graph as they are committed
(`mmsearch.indexer.graph_growth`), so the build seconds of both are reported beside the
search; its "shards one by one" rows are --shards separate graphs (what a graph too big
to grow in memory, or a Ray build, leaves), written directly.
Writes results/shards.json and .md (the table render_readme.py shows).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, clustered, environment, ground_truth, recall_at  # noqa: E402
from search_overhead import write_index  # noqa: E402

SWEEPS = {  # factory -> (knob, values swept, fixed knobs)
    "Flat": (None, [None], {}),
    "HNSW32": ("efSearch", [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 32, 40, 48, 64, 96, 128], {}),
    "IVF256,PQ32x4fs,RFlat": ("nprobe", [1, 2, 3, 4, 6, 8, 16], {"k_factor": 8}),
}
TARGETS = (0.9, 0.95, 0.99)
SPREAD = 0.8  # around each cluster centre: hard enough that HNSW needs efSearch ~32 for recall 0.95


def batch_qps(fns, xq, repeat):
    """Best-of-`repeat` QPS of each fn on the whole batch, rounds interleaved."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat + 1):  # the first round warms up
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(xq)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [len(xq) / b for b in best]


def single_ms(fns, xq, rounds=3):
    """Median latency of one-query searches: each side searches every query in a block of its
    own (one index's pages and caches at a time, as a process serving one index would), the
    blocks of the sides interleaved over `rounds`, their order alternating so that drifting
    load cancels out. (Timing the sides back to back per query measured cache contention
    between them: the joined index looked 0.79x the single shard, 1.0x timed alone.)"""
    times = [[] for _ in fns]
    for r in range(rounds):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            for j, q in enumerate(xq):
                t0 = time.perf_counter()
                fns[i](q[None, :])
                if j >= min(20, len(xq) // 4):  # the block's first queries warm it up
                    times[i].append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


def sweep(indexes, spec, xq, gt, k, repeat, singles):
    """Every knob value on both indexes: recall@k, batch QPS and single-query ms."""
    knob, values, fixed = SWEEPS[spec]
    points = []
    for value in values:
        params = dict(fixed, **({knob: value} if knob else {}))
        fns = [lambda q, ix=ix: ix.search_vectors(q, k, params=params) for ix in indexes]
        found = [fn(xq)[1] for fn in fns]
        qps = batch_qps(fns, xq, repeat)
        ms = single_ms(fns, xq[:singles])
        points.append({"params": params, "recall": [round(recall_at(f, gt, k), 4) for f in found],
                       "qps": [round(v, 1) for v in qps], "single_ms": [round(v, 4) for v in ms],
                       "same_ids": round(float((found[0] == found[1]).mean()), 4)})
        print(json.dumps(points[-1]), flush=True)
    return points


def at_recall(points, side, target):
    """The cheapest sweep point of `side` (0: one shard, 1: sharded) reaching `target`."""
    ok = [p for p in points if p["recall"][side] >= target]
    return max(ok, key=lambda p: p["qps"][side]) if ok else None


def compare(points, exact):
    """Sharded / single-shard QPS: at the one point (exact), or at each recall target."""
    if exact:
        p = points[0]
        return [{"recall": p["recall"], "qps": p["qps"], "single_ms": p["single_ms"], "same_ids": p["same_ids"],
                 "batch_ratio": round(p["qps"][1] / p["qps"][0], 3),
                 "single_ratio": round(p["single_ms"][0] / p["single_ms"][1], 3)}]
    rows = []
    for target in TARGETS:
        one, many = at_recall(points, 0, target), at_recall(points, 1, target)
        if one is None or many is None:
            continue
        apart = at_recall(points, 2, target) if len(points[0]["recall"]) > 2 else None
        if apart is not None:  # the shards searched one by one (join_shards=False)
            rows.append({"target_recall": target, "apart": True, "params": [one["params"], apart["params"]],
                         "recall": [one["recall"][0], apart["recall"][2]], "qps": [one["qps"][0], apart["qps"][2]],
                         "single_ms": [one["single_ms"][0], apart["single_ms"][2]],
                         "batch_ratio": round(apart["qps"][2] / one["qps"][0], 3),
                         "single_ratio": round(one["single_ms"][0] / apart["single_ms"][2], 3)})
        rows.append({"target_recall": target, "params": [one["params"], many["params"]],
                     "recall": [one["recall"][0], many["recall"][1]], "qps": [one["qps"][0], many["qps"][1]],
                     "single_ms": [one["single_ms"][0], many["single_ms"][1]],
                     "batch_ratio": round(many["qps"][1] / one["qps"][0], 3),
                     "single_ratio": round(one["single_ms"][0] / many["single_ms"][1], 3)})
    return rows


def build_through_writer(path, x, spec, shards):
    """Seconds to index `x` with `mmsearch.indexer.index_vectors` at a shard size giving
    `shards` shards (a graph's grow into one: `indexer.graph_growth`)."""
    from mmsearch.indexer.vectors import index_vectors

    t0 = time.perf_counter()
    index_vectors(path, x, [f"i{i}" for i in range(len(x))], index=spec, shard_size=-(-len(x) // shards))
    return round(time.perf_counter() - t0, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--specs", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    ap.add_argument("--threads", type=int, nargs="+", default=[faiss.omp_get_max_threads()],
                    help="faiss OpenMP threads of the searching thread (each a separate measurement)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--singles", type=int, default=300, help="single-query searches to time per point")
    ap.add_argument("--quick", action="store_true", help="n=30000, 100 single queries")
    ap.add_argument("--out", default=str(RESULTS / "shards.json"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.singles = 30_000, 100
    x, xq = clustered(args.n, args.dim, 1000, seed=3, spread=SPREAD)
    gt = ground_truth(x, xq, args.k)
    load_before, results = os.getloadavg()[0], []
    from mmsearch.query import open_index

    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.specs:
            indexes, build_s = [], None
            if "HNSW" in spec:  # through the shard writer, which grows a graph's shards into one
                build_s = [build_through_writer(Path(tmp) / f"{spec}-{shards}", x, spec, shards)
                           for shards in (1, args.shards)]
                indexes = [open_index(Path(tmp) / f"{spec}-{shards}") for shards in (1, args.shards)]
                print(json.dumps({"index": spec, "build_s": build_s,
                                  "shards": [len(ix.shards) for ix in indexes]}), flush=True)
            else:
                for shards in (1, args.shards):
                    path = Path(tmp) / f"{spec.replace(',', '_')}-{shards}"
                    write_index(path, x, spec, shards)
                    indexes.append(open_index(path))
            if "IVF" in spec:  # also the shards searched one by one, as before they were joined
                indexes.append(open_index(path, join_shards=False))
            if "HNSW" in spec:  # also graphs kept apart (too big to grow, or written by Ray workers)
                path = Path(tmp) / f"{spec}-{args.shards}-apart"
                write_index(path, x, spec, args.shards)
                indexes.append(open_index(path))
            for threads in args.threads:
                faiss.omp_set_num_threads(threads)
                points = sweep(indexes, spec, xq, gt, args.k, args.repeat, args.singles)
                results.append({"index": spec, "threads": threads, "exact": spec == "Flat", "points": points,
                                "compare": compare(points, spec == "Flat"), "build_s": build_s,
                                "shard_files": [len(ix.shards) for ix in indexes]})
            for ix in indexes:
                ix.close()
    report = {"benchmark": "shards", "n": args.n, "dim": args.dim, "spread": SPREAD, "k": args.k, "shards": [1, args.shards],
              "queries": len(xq), "threads": args.threads, "environment": environment(),
              "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report) + "\n")
    print("\n" + markdown(report))


def markdown(report):
    """The comparison table (also what render_readme.py shows)."""
    s = report["shards"][1]
    lines = [f"| index | threads | recall@10 (1 / {s} shards) | QPS batch 1000 (1 / {s}) | ratio | "
             f"1-query ms (1 / {s}) | ratio |", "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        for c in r["compare"]:
            what = r["index"] + ("" if r["exact"] else f" at recall >= {c['target_recall']}")
            what += ", shards one by one" if c.get("apart") else ""
            if r.get("build_s") and not c.get("apart"):
                what += f" (graph grown: {r['shard_files'][1]} shard; build {r['build_s'][0]} / {r['build_s'][1]} s)"
            lines.append(f"| {what} | {r['threads']} | {c['recall'][0]} / {c['recall'][1]} | {c['qps'][0]} / {c['qps'][1]} | "
                         f"{c['batch_ratio']} | {c['single_ms'][0]} / {c['single_ms'][1]} | {c['single_ratio']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
