"""The query path: shard scaling, end-to-end latency with the tiny model, metadata hydration.

    python benchmarks/query_path.py [--quick]

1. Shard scaling: the same vectors as 1, 2, 4 and 8 exact (Flat) shards; QPS at batch
   1000, single-query latency, and exactness (ids equal to the one-shard result).
2. Latency: `Index.search(text)` end to end (encode + search + hydrate) with the
   built-in tiny model (or a random one of the same size) over a generated corpus,
   p50 / p95 / p99 over single queries, with the share of each stage.
3. Hydration: `Index.records(rows)` (Arrow `take` on memory-mapped shards) for 10, 100
   and 1000 hits against reading the rows one by one.
Writes results/query_path.json, .md and query_path_shards.png.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, best_time, clustered, environment, save  # noqa: E402


def shard_scaling(n, d, tmp):
    from mmsearch.indexer.vectors import index_vectors
    from mmsearch.query import open_index

    xb, xq = clustered(n, d, 1000, seed=3)
    rows, reference = [], None
    for shards in (1, 2, 4, 8):
        out = tmp / f"s{shards}"
        index_vectors(out, xb, [str(i) for i in range(n)], index="Flat", shard_size=-(-n // shards),
                      store_vectors=False)
        idx = open_index(out)
        _, I = idx.search_vectors(xq, 10)
        reference = I if reference is None else reference
        qps = len(xq) / best_time(lambda: idx.search_vectors(xq, 10))
        lat = [_timed(lambda: idx.search_vectors(xq[i:i + 1], 10)) for i in range(200)]
        rows.append({"shards": shards, "qps_batch1000": round(qps, 1), "p50_ms_one_query": _ms(lat, 50),
                     "exact_vs_one_shard": float(np.mean(I == reference))})
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ms(samples, q) -> float:
    return round(float(np.percentile(samples, q)) * 1000, 3)


def latency(tmp, n_queries):
    import mmsearch
    from mmsearch.datasets import make
    from mmsearch.encoders.loading import BUILTIN_MODELS, builtin_model_path
    from mmsearch.errors import ModelLoadError

    root = tmp / "corpus"
    make(root, format="mbeir", size=300, seed=5, tasks=("t2i", "i2t"), splits=("test",))
    try:
        model = str(builtin_model_path("mmsearch-tiny"))
    except ModelLoadError:
        from mmsearch.testing import QwenSize, build_tiny_model
        model = str(build_tiny_model("qwen2_vl", tmp / "model", size=QwenSize(192, 3, 6, 2, 512, 128, 3, 2)))
    pool = root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"
    mmsearch.build_index([pool], tmp / "idx", model=model, source_kind="mbeir", source_options={"root": str(root)})
    idx = mmsearch.open_index(tmp / "idx")
    texts = [f"three small red circles on the left number {i}" for i in range(n_queries)]
    idx.search(texts[0], k=10)  # warm-up: loads the model
    total = [_timed(lambda t=t: idx.search(t, k=10)) for t in texts]
    enc = [_timed(lambda t=t: idx.encoder.encode([t])) for t in texts]
    xq = idx.encoder.encode(texts[:1])
    srch = [_timed(lambda: idx.search_vectors(xq, 10)) for _ in texts]
    _, I = idx.search_vectors(xq, 10)
    hyd = [_timed(lambda: idx.records([int(r) for r in I[0]])) for _ in texts]
    return {"items": len(idx), "model": model, "queries": n_queries,
            "end_to_end_ms": {f"p{q}": _ms(total, q) for q in (50, 95, 99)},
            "encode_ms_p50": _ms(enc, 50), "search_ms_p50": _ms(srch, 50), "hydrate_ms_p50": _ms(hyd, 50)}


def hydration(tmp):
    import pyarrow as pa

    from mmsearch.indexer.vectors import index_vectors
    from mmsearch.query import open_index

    n = 100_000
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = [{"year": int(1990 + i % 30), "tag": f"t{i % 97}"} for i in range(n)]
    index_vectors(tmp / "h", x, [f"id{i}" for i in range(n)], texts=[f"caption {i}" for i in range(n)],
                  metadata=meta, index="Flat", shard_size=25_000)
    idx = open_index(tmp / "h")
    tables = [pa.ipc.open_file(pa.memory_map(str(p))).read_all()
              for p in sorted((tmp / "h" / "shards").glob("*/meta.arrow"))]
    out = []
    for hits in (10, 100, 1000):
        rows = rng.choice(n, size=hits, replace=False).tolist()
        take = best_time(lambda: idx.records(rows), repeat=20)

        def one_by_one():
            return [tables[r // 25_000].slice(r % 25_000, 1).to_pylist()[0] for r in rows]
        naive = best_time(one_by_one, repeat=5)
        out.append({"hits": hits, "take_ms": round(take * 1000, 3), "row_by_row_ms": round(naive * 1000, 3)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, d = (100_000, 256) if args.quick else (200_000, 768)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        result = {"environment": environment(), "shards": shard_scaling(n, d, tmp), "vectors": [n, d],
                  "latency": latency(tmp, 100 if args.quick else 300), "hydration": hydration(tmp)}
    md = [f"### Shard scaling ({n:,} x {d}, exact Flat shards, 1000 queries)\n",
          "| shards | QPS (batch 1000) | p50 ms (1 query) | same ids as 1 shard |", "|---|---|---|---|"]
    md += [f"| {r['shards']} | {r['qps_batch1000']} | {r['p50_ms_one_query']} | {r['exact_vs_one_shard']:.4f} |"
           for r in result["shards"]]
    lat = result["latency"]
    md += ["", f"### End-to-end query latency ({lat['items']} items, tiny model, text queries)\n",
           "| p50 ms | p95 ms | p99 ms | encode p50 | search p50 | hydrate p50 |", "|---|---|---|---|---|---|",
           f"| {lat['end_to_end_ms']['p50']} | {lat['end_to_end_ms']['p95']} | {lat['end_to_end_ms']['p99']} | "
           f"{lat['encode_ms_p50']} | {lat['search_ms_p50']} | {lat['hydrate_ms_p50']} |",
           "", "### Metadata hydration (100k rows in 4 shards)\n", "| hits | Arrow take ms | row by row ms |",
           "|---|---|---|"]
    md += [f"| {h['hits']} | {h['take_ms']} | {h['row_by_row_ms']} |" for h in result["hydration"]]
    save("query_path", result, "\n".join(md) + "\n")
    _plot(result["shards"])
    print("\n".join(md))


def _plot(rows):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["shards"] for r in rows], [r["qps_batch1000"] for r in rows], marker="o")
    ax.set_xlabel("shards")
    ax.set_ylabel("QPS, batch of 1000")
    ax.set_xticks([r["shards"] for r in rows])
    ax.grid(alpha=0.3)
    ax.set_title("Shard scaling (exact search)")
    fig.tight_layout()
    fig.savefig(RESULTS / "query_path_shards.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
