"""What `Index.search_vectors` adds on top of raw faiss, on the same shard files.

    python benchmarks/search_overhead.py [--n 50000] [--dim 128] [--shards 1 4] [--quick]

For each index type and shard count it writes an index through `mmsearch.index_format`
(clustered unit vectors, seeded), opens it with `mmsearch.query.open_index`, and the
same shard files with `faiss.read_index` (one shard: that index; several: a threaded
`faiss.IndexShards`, faiss's own multi-shard search). Both get the same per-call
`SearchParameters`. Reported: QPS at batch 1000 (best of --repeat), and the median
latency of single-query searches (OpenMP at 1 thread, as a latency-bound server
would run) and the median paired differences in wall time
("added_ms") and in CPU time ("added_cpu_ms", robust to load from other processes).
Writes benchmarks/results/search_overhead.json and prints a Markdown table.
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from mmsearch import index_format as fmt
from mmsearch.query import open_index

from common import raw_faiss_params  # benchmarks/ is the script's folder

SPECS = {  # factory -> per-call knobs (the same for both sides)
    "Flat": {},
    "HNSW32": {"efSearch": 64},
    "IVF256,PQ32x4fs,RFlat": {"nprobe": 16, "k_factor": 4},
}


def clustered(n, d, seed, centers=256):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def write_index(path, x, spec, shards):
    model = fmt.ModelInfo(id="bench/vectors", backbone="qwen2_vl", dim=x.shape[1], dtype="float32")
    faiss_spec = fmt.FaissSpec(spec)
    path.mkdir(parents=True)
    if "IVF" in spec:
        template = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        template.train(x[: min(len(x), 256 * 64)])
        faiss_spec = fmt.write_trained_template(path, template, spec)
    manifest = fmt.Manifest.create(model, faiss_spec)
    bounds = np.linspace(0, len(x), shards + 1).astype(int)
    for number, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = np.arange(a, b, dtype=np.int64)
        index = fmt.new_shard_index(path, manifest)
        index.add_with_ids(x[a:b], rows)
        meta = fmt.build_meta_table([f"i{r}" for r in rows], ["text"] * len(rows), [None] * len(rows),
                                    [None] * len(rows))
        manifest = manifest.with_shard(fmt.write_shard(path, fmt.shard_name(number), index, rows, meta))
    fmt.write_manifest(path, manifest)
    return manifest


def raw_faiss(path, manifest):
    """The same shard files, opened and searched by faiss alone."""
    indexes = [fmt.open_shard_index(path, s) for s in manifest.shards]
    if len(indexes) == 1:
        return indexes[0], indexes
    shards = faiss.IndexShards(manifest.model.dim, True, False)  # threaded, ids as stored
    for index in indexes:
        shards.add_shard(index)
    return shards, indexes


def batch_qps(fns, xq, repeat):
    """Best-of-`repeat` QPS of each fn on the whole batch, rounds interleaved so that
    load from other processes hits both sides alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat + 1):  # the first round warms up
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(xq)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [len(xq) / b for b in best]


def single_ms(ours, theirs, xq):
    """One-query searches, every query timed on both sides back to back (the order
    alternating, so drifting load cancels out): median wall latency of each side,
    then the medians of the paired differences in wall time and in process CPU time.
    On a loaded machine the wall difference also counts preemptions that land in the
    extra work; the CPU difference is the work added."""
    wall, cpu = [], []
    warm = min(50, len(xq) // 2)  # the first ones warm up (half of a short --singles run)
    for j, q in enumerate(xq):
        q = q[None, :]
        sides = (ours, theirs) if j % 2 == 0 else (theirs, ours)
        stamps = [(time.perf_counter(), time.process_time())]
        for fn in sides:
            fn(q)
            stamps.append((time.perf_counter(), time.process_time()))
        spent = [tuple(b - a for a, b in zip(stamps[i], stamps[i + 1])) for i in (0, 1)]
        mine, raw = spent if j % 2 == 0 else spent[::-1]
        if j >= warm:
            wall.append((mine[0], raw[0]))
            cpu.append(mine[1] - raw[1])
    mine, raw = zip(*wall)
    medians = [1e3 * statistics.median(v) for v in (mine, raw, [a - b for a, b in wall], cpu)]
    p10 = [1e3 * float(np.percentile(v, 10)) for v in (mine, raw)]  # nearest to an idle machine
    return medians + p10


def measure(path, manifest, spec, knobs, xq, k, repeat, singles):
    raw, _keep = raw_faiss(path, manifest)
    params = raw_faiss_params(spec, knobs)
    with open_index(path) as index:
        ours = lambda q: index.search_vectors(q, k, params=knobs)  # noqa: E731
        theirs = lambda q: raw.search(q, k, params=params)  # noqa: E731
        out = {"same_ids": round(float((ours(xq)[1] == theirs(xq)[1]).mean()), 4)}  # same work, same answer
        qps = batch_qps((ours, theirs), xq, repeat)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # one query needs no OpenMP team (whose barriers wait out
        try:                          # scheduler quanta when other processes load the cores)
            ms = single_ms(ours, theirs, xq[:singles])
        finally:
            faiss.omp_set_num_threads(threads)
    out.update(qps_mmsearch=round(qps[0], 1), qps_faiss=round(qps[1], 1),
               single_ms_mmsearch=round(ms[0], 4), single_ms_faiss=round(ms[1], 4), added_ms=round(ms[2], 4),
               added_cpu_ms=round(ms[3], 4), single_ms_p10_mmsearch=round(ms[4], 4),
               single_ms_p10_faiss=round(ms[5], 4), added_p10_ms=round(ms[4] - ms[5], 4))
    out["qps_ratio"] = round(out["qps_mmsearch"] / out["qps_faiss"], 3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--specs", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--singles", type=int, default=1000, help="single-query searches to time")
    ap.add_argument("--quick", action="store_true", help="n=50000 and 500 single queries")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "search_overhead.json"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.singles = 50_000, 500
    x, xq = clustered(args.n, args.dim, seed=0), clustered(1000, args.dim, seed=1)
    load_before, rows = os.getloadavg()[0], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.specs:
            for shards in args.shards:
                path = Path(tmp) / f"{spec.replace(',', '_')}-{shards}"
                manifest = write_index(path, x, spec, shards)
                result = measure(path, manifest, spec, SPECS[spec], xq, args.k, args.repeat, args.singles)
                rows.append({"index": spec, "shards": shards, "batch": len(xq), **result})
                print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "search_overhead", "n": args.n, "dim": args.dim, "k": args.k,
              "faiss": faiss.__version__, "omp_threads": faiss.omp_get_max_threads(),
              "machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n| index | shards | QPS mmsearch | QPS faiss | ratio | 1-query ms mmsearch / faiss (median) | "
          "added ms (median paired) | added CPU ms | 1-query ms p10 mmsearch / faiss | added ms p10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['index']} | {r['shards']} | {r['qps_mmsearch']} | {r['qps_faiss']} | {r['qps_ratio']} | "
              f"{r['single_ms_mmsearch']} / {r['single_ms_faiss']} | {r['added_ms']} | {r['added_cpu_ms']} | "
              f"{r['single_ms_p10_mmsearch']} / {r['single_ms_p10_faiss']} | {r['added_p10_ms']} |")


if __name__ == "__main__":
    main()
