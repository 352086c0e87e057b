"""Lexical index cost and search latency per mode (issue #26).

    python benchmarks/lexical.py [--n 100000] [--shards 2] [--queries 300] [--quick]

Documents: seeded Zipf text (20-120 words over a 30k-word vocabulary) plus a unique part
code each. Measured:

- lexical build: what writing a shard's lexical index costs per 100k documents (time
  and bytes on disk), for tantivy (what mmsearch uses, `index_format.lexical`) and bm25s
  (the alternative considered, numpy backend, its own save format), on this machine;
- search latency, one query per call through `Index.search` (p50 / p99 over --queries
  queries, after a warm-up): vector, lexical and hybrid (RRF) on the same index of --n
  rows in --shards shards (Flat vectors of the built-in model's size, the built-in model
  embedding each query with the numpy runtime), and the query embedding alone.

Writes results/lexical.json and .md (the table render_readme.py shows).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, save  # noqa: E402

from mmsearch import index_format as fmt  # noqa: E402
from mmsearch.index_format.lexical import write_lexical  # noqa: E402


def corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(list(letters), size=rng.integers(3, 10))) for _ in range(30000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    lengths = rng.integers(20, 121, size=n)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    docs, at = [], 0
    for i, m in enumerate(lengths):
        docs.append(" ".join(vocab[j] for j in words[at:at + m]) + f" QX-{i:06d}")
        at += m
    queries = [" ".join(vocab[j] for j in rng.choice(2000, size=3)) for _ in range(200)]
    return docs, queries + [f"QX-{int(i):06d}" for i in rng.choice(n, size=100, replace=False)]


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def build_costs(docs, queries, work):
    """Seconds and bytes of a lexical index over `docs`, per library (one process, one thread each);
    bm25s's own query latency (its numpy backend, one query per call, k 10)."""
    out = {}
    folder = work / "tantivy"
    folder.mkdir()
    t = time.perf_counter()
    write_lexical(folder, docs)
    out["tantivy"] = {"seconds": time.perf_counter() - t, "bytes": folder_bytes(folder / fmt.LEXICAL_DIR)}
    import bm25s  # the alternative considered: `pip install -e .[bench]`
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    t = time.perf_counter()
    tokens = bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(method="lucene")
    retriever.index(tokens, show_progress=False)
    retriever.save(str(work / "bm25s"), show_progress=False)
    out["bm25s"] = {"seconds": time.perf_counter() - t, "bytes": folder_bytes(work / "bm25s")}

    def bm25s_search(q):
        retriever.retrieve(bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False), k=10,
                           show_progress=False, n_threads=1)

    out["bm25s"]["latency"] = latencies(bm25s_search, queries)
    return out


def write_index(path, docs, encoder, shards, seed=0):
    """An index of `docs` with random unit vectors (latency, not quality, is measured) whose
    manifest names `text` as the lexical field: write_shard builds each shard's lexical index."""
    rng = np.random.default_rng(seed)
    manifest = fmt.Manifest.create(fmt.model_info_of(encoder), fmt.FaissSpec("Flat"),
                                   extra=fmt.lexical_extra(("text",)))
    path.mkdir(parents=True)
    fmt.write_manifest(path, manifest)
    bounds = np.linspace(0, len(docs), shards + 1).astype(int)
    for number, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = np.arange(a, b, dtype=np.int64)
        x = rng.standard_normal((len(rows), encoder.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index = fmt.new_shard_index(path, manifest)
        index.add_with_ids(x, rows)
        meta = fmt.build_meta_table([f"d{r}" for r in rows], ["text"] * len(rows), docs[a:b], [None] * len(rows))
        manifest = manifest.with_shard(fmt.write_shard(path, fmt.shard_name(number), index, rows, meta))
        fmt.write_manifest(path, manifest)


def latencies(fn, queries, warmup=20):
    for q in queries[:warmup]:
        fn(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="10k documents")
    args = ap.parse_args()
    n = 10_000 if args.quick else args.n
    import mmsearch
    from mmsearch.query import open_index

    docs, queries = corpus(n)
    work = Path(tempfile.mkdtemp(prefix="mmsearch-lexical-"))
    try:
        build = build_costs(docs, queries, work)
        encoder = mmsearch.load_encoder("mmsearch-tiny")
        t = time.perf_counter()
        write_index(work / "index", docs, encoder, args.shards)
        index_seconds = time.perf_counter() - t
        with open_index(work / "index", encoder=encoder) as index:
            modes = {"encode only": latencies(lambda q: encoder.encode([q], show_progress=False), queries)}
            for mode in ("vector", "lexical", "hybrid"):
                modes[mode] = latencies(lambda q: index.search(q, k=10, mode=mode), queries)
            modes["hybrid (score, alpha 0.5)"] = latencies(
                lambda q: index.search(q, k=10, mode="hybrid", alpha=0.5), queries)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_100k = 100_000 / n
    env = environment()
    env["threads"] = "tantivy writer 1 thread; search 1 query per call"
    result = {"environment": env, "n": n, "shards": args.shards, "queries": len(queries),
              "build": {lib: {"seconds_per_100k": round(v["seconds"] * per_100k, 2),
                              "mb_per_100k": round(v["bytes"] * per_100k / 1e6, 1),
                              "query": v.get("latency", modes["lexical"])} for lib, v in build.items()},
              "index_write_seconds": round(index_seconds, 2), "latency": modes}
    rows = [f"| {lib} | {v['seconds_per_100k']} | {v['mb_per_100k']} | {v['query']['p50_ms']} | {v['query']['p99_ms']} |"
            for lib, v in result["build"].items()]
    md = ["| library | build s / 100k docs | MB / 100k docs | query p50 ms | query p99 ms |", "|---|---|---|---|---|",
          *rows, "", "(tantivy's query time is mmsearch's whole lexical search: global IDF over the shards, "
          "filters, row mapping; bm25s's is its own `retrieve`.)", "",
          "| mode | p50 ms | p99 ms |", "|---|---|---|",
          *[f"| {m} | {v['p50_ms']} | {v['p99_ms']} |" for m, v in modes.items()]]
    save("lexical", result, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
