"""Multi-vector search (issue #24): brute-force MaxSim against MUVERA + exact MaxSim rerank.

Also PLAID-style centroid pruning (`--centroids`): pages scored by MaxSim against the
k-means centroids their tokens fall in, the best `candidates` reranked exactly.

Pages of ~600-900 token vectors (dim 128, as ColQwen2/ColPali) from a seeded structured
generator (`mmsearch.multivector.synthetic`), queries of 20 tokens sampled from a target
page. Ground truth: brute-force MaxSim over float16 tokens, all queries through one matmul
per block of pages (brute force at its fastest). MUVERA: fastembed-identical FDEs in a faiss
IndexFlatIP, `candidates` per query reranked by exact MaxSim (float16 or int8 tokens). QPS
counts everything per query (query FDE, faiss search, rerank). FDE build time is compared
with fastembed's own per-document code when MMSEARCH_FASTEMBED_PYTHON names its python.

    python benchmarks/multivector.py            # 20,000 pages (a few minutes per stage)
    python benchmarks/multivector.py --quick    # 2,000 pages
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, recall_at, save  # noqa: E402

from mmsearch.multivector import Muvera, TokenStore, exhaustive_search, maxsim_scores, rerank  # noqa: E402
from mmsearch.multivector.synthetic import PageModel  # noqa: E402

CHUNK = 500  # pages generated and encoded at a time


def build(pm: PageModel, lengths: np.ndarray, muvera: Muvera):
    """float16 and int8 token stores, document FDEs, and the FDE build seconds."""
    offsets = np.r_[0, np.cumsum(lengths)]
    f16 = np.empty((offsets[-1], pm.dim), np.float16)
    i8 = np.empty((offsets[-1], pm.dim), np.int8)
    scales = np.empty(offsets[-1], np.float32)
    fdes = np.empty((len(lengths), muvera.encoding_dim), np.float32)
    fde_seconds = 0.0
    for lo in range(0, len(lengths), CHUNK):
        hi = min(lo + CHUNK, len(lengths))
        a, b = offsets[lo], offsets[hi]
        tokens = pm.pages(lo, lengths[lo:hi])
        t0 = time.perf_counter()
        fdes[lo:hi] = muvera.encode_documents(tokens, offsets[lo:hi + 1] - a)
        fde_seconds += time.perf_counter() - t0
        f16[a:b] = tokens
        q = TokenStore.from_float(tokens, offsets[lo:hi + 1] - a, "int8")
        i8[a:b], scales[a:b] = q.tokens, q.scales
    return TokenStore(f16, offsets), TokenStore(i8, offsets, scales), fdes, fde_seconds


def fastembed_seconds_per_page(pm: PageModel, lengths: np.ndarray) -> float | None:
    """fastembed's process_document over the same pages, timed in its own interpreter."""
    python = os.environ.get("MMSEARCH_FASTEMBED_PYTHON")
    if not python:
        return None
    script = textwrap.dedent("""
        import sys, time
        import numpy as np
        from fastembed.postprocess.muvera import Muvera
        z = np.load(sys.argv[1]); tok, off = z["tokens"], z["offsets"]; m = Muvera(tok.shape[1])
        t0 = time.perf_counter()
        for a, b in zip(off[:-1], off[1:]):
            m.process_document(tok[a:b])
        print(time.perf_counter() - t0)
    """)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", tokens=pm.pages(0, lengths), offsets=np.r_[0, np.cumsum(lengths)])
        out = subprocess.run([python, "-c", script, str(Path(tmp) / "in.npz")], check=True,
                             capture_output=True, text=True)
    return float(out.stdout) / len(lengths)


def muvera_rerank(index, muvera, store, queries, qoff, candidates, k=10):
    t0 = time.perf_counter()
    _, cand = index.search(muvera.encode_queries(queries, qoff), candidates)
    _, found = rerank(queries, qoff, store, cand, k)
    return found, time.perf_counter() - t0


class CentroidPruning:
    """PLAID's first stage (Santhanam et al., 2022), the cheap version: k-means centroids of the
    token space; a page keeps the set of centroids its tokens fall in (uint16 ids); a query
    scores every page by MaxSim against its centroids instead of its tokens (one (m, C) matmul,
    then a gather and a max per page), and the best `candidates` go to exact MaxSim."""

    def __init__(self, store: TokenStore, n_centroids: int, sample: int = 262_144, seed: int = 0):
        import faiss

        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(store.tokens), min(sample, len(store.tokens)), replace=False))
        km = faiss.Kmeans(store.tokens.shape[1], n_centroids, niter=10, seed=seed, spherical=True)
        km.train(np.ascontiguousarray(store.tokens[rows], dtype=np.float32))
        self.centroids = km.centroids
        assign = np.empty(len(store.tokens), np.int64)
        for lo in range(0, len(store.tokens), 1 << 19):
            chunk = np.ascontiguousarray(store.tokens[lo:lo + (1 << 19)], dtype=np.float32)
            assign[lo:lo + len(chunk)] = km.index.search(chunk, 1)[1][:, 0]
        page = np.repeat(np.arange(store.n_sets), np.diff(store.offsets))
        keys = np.unique(page * n_centroids + assign)  # sorted: by page, then centroid
        self.ids = (keys % n_centroids).astype(np.uint16)
        counts = np.bincount(keys // n_centroids, minlength=store.n_sets)
        self.starts = np.r_[0, np.cumsum(counts)[:-1]]
        self.build_seconds = time.perf_counter() - t0

    def search(self, queries: np.ndarray, qoff: np.ndarray, candidates: int) -> np.ndarray:
        out = np.empty((len(qoff) - 1, candidates), np.int64)
        for i in range(len(qoff) - 1):
            sim = queries[qoff[i]:qoff[i + 1]] @ self.centroids.T      # (m, C)
            approx = np.maximum.reduceat(sim[:, self.ids], self.starts, axis=1).sum(axis=0)
            top = np.argpartition(-approx, candidates - 1)[:candidates]
            out[i] = top[np.argsort(-approx[top])]
        return out


def centroid_rerank(pruning, store, queries, qoff, candidates, k=10):
    t0 = time.perf_counter()
    _, found = rerank(queries, qoff, store, pruning.search(queries, qoff, candidates), k)
    return found, time.perf_counter() - t0


def spearman_sample(muvera, store, fdes, queries, qoff, n_pages, n_queries=20, seed=0):
    """Mean Spearman between FDE inner products and MaxSim over a random sample of pages."""
    rng = np.random.default_rng(seed)
    pages = rng.choice(store.n_sets, min(n_pages, store.n_sets), replace=False)
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    rhos = []
    for i in range(min(n_queries, len(qoff) - 1)):
        q = queries[qoff[i]:qoff[i + 1]]
        approx = fdes[pages] @ muvera.encode_query(q)
        rhos.append(np.corrcoef(rank(approx), rank(maxsim_scores(q, store, pages)))[0, 1])
    return float(np.mean(rhos))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--query-tokens", type=int, default=20)
    ap.add_argument("--candidates", default="50,100,200,500,1000")
    ap.add_argument("--centroids", type=int, default=1024, help="PLAID-style centroid pruning (0: skip)")
    ap.add_argument("--quick", action="store_true", help="2,000 pages, 30 queries")
    args = ap.parse_args()
    if args.quick:
        args.pages, args.queries = 2_000, 30
    import faiss

    pm, muvera = PageModel(), Muvera(128)
    rng = np.random.default_rng(0)
    lengths = rng.integers(600, 901, args.pages)
    print(f"building {args.pages} pages, {lengths.sum():,} tokens", flush=True)
    f16, i8, fdes, fde_s = build(pm, lengths, muvera)
    fe_s = fastembed_seconds_per_page(pm, lengths[:100])
    queries = pm.queries(rng.integers(0, args.pages, args.queries), args.query_tokens, seed=1)
    qoff = np.arange(args.queries + 1) * args.query_tokens

    print("brute force", flush=True)
    t0 = time.perf_counter()
    _, truth = exhaustive_search(queries, qoff, f16, 10)
    brute_qps = args.queries / (time.perf_counter() - t0)
    index = faiss.IndexFlatIP(muvera.encoding_dim)
    index.add(fdes)
    rows = [{"method": "brute-force MaxSim (float16, all queries batched)", "candidates": "all",
             "recall@10": 1.0, "qps": round(brute_qps, 2), "speedup": 1.0}]
    _, fde_only = index.search(muvera.encode_queries(queries, qoff), 10)
    rows.append({"method": "MUVERA FDE alone (no rerank)", "candidates": 10,
                 "recall@10": round(recall_at(fde_only, truth), 3), "qps": None, "speedup": None})
    for c in [int(v) for v in args.candidates.split(",")]:
        for name, store in (("float16", f16), ("int8", i8)):
            print(f"MUVERA + rerank {name}, {c} candidates", flush=True)
            found, seconds = muvera_rerank(index, muvera, store, queries, qoff, c)
            qps = args.queries / seconds
            rows.append({"method": f"MUVERA + MaxSim rerank ({name} tokens)", "candidates": c,
                         "recall@10": round(recall_at(found, truth), 3), "qps": round(qps, 1),
                         "speedup": round(qps / brute_qps, 1)})
    pruning = None
    if args.centroids:
        print(f"PLAID-style centroids: {args.centroids}", flush=True)
        pruning = CentroidPruning(f16, args.centroids)
        for c in [int(v) for v in args.candidates.split(",")]:
            found, seconds = centroid_rerank(pruning, i8, queries, qoff, c)
            qps = args.queries / seconds
            rows.append({"method": f"PLAID-style centroids ({args.centroids}) + MaxSim rerank (int8 tokens)",
                         "candidates": c, "recall@10": round(recall_at(found, truth), 3), "qps": round(qps, 1),
                         "speedup": round(qps / brute_qps, 1)})
    mean_tokens = float(lengths.mean())
    result = {
        "environment": environment(), "pages": args.pages, "tokens": int(lengths.sum()), "dim": 128,
        "queries": args.queries, "query_tokens": args.query_tokens, "muvera": {"k_sim": 5, "dim_proj": 16,
                                                                           "r_reps": 20, "encoding_dim": muvera.encoding_dim},
        "rows": rows,
        "bytes_per_page": {"tokens_float16": round(mean_tokens * 128 * 2), "tokens_int8": round(mean_tokens * (128 + 4)),
                           "fde_float32": muvera.encoding_dim * 4, "fde_float16": muvera.encoding_dim * 2},
        "fde_build_s_per_1k_pages": round(fde_s / args.pages * 1000, 2),
        "fastembed_fde_build_s_per_1k_pages": None if fe_s is None else round(fe_s * 1000, 2),
        "spearman_fde_vs_maxsim": round(spearman_sample(muvera, f16, fdes, queries, qoff, 2000), 3),
        "centroids": None if pruning is None else {
            "n": args.centroids, "build_s_per_1k_pages": round(pruning.build_seconds / args.pages * 1000, 2),
            "bytes_per_page": round(pruning.ids.nbytes / args.pages + 8, 1)},
    }
    save("multivector", result, markdown(result))
    print(markdown(result))


def markdown(r) -> str:
    rows = [[x["method"], x["candidates"], x["recall@10"], x["qps"] if x["qps"] is not None else "-",
             f"{x['speedup']}x" if x["speedup"] else "-"] for x in r["rows"]]
    lines = ["| method | candidates | recall@10 vs brute force | QPS | vs brute force |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    b = r["bytes_per_page"]
    fe = r["fastembed_fde_build_s_per_1k_pages"]
    build = f"{r['fde_build_s_per_1k_pages']} s per 1k pages"
    if fe:
        build += f" (fastembed's per-document code: {fe} s, {fe / r['fde_build_s_per_1k_pages']:.1f}x slower)"
    lines += ["", f"Bytes per page: tokens {b['tokens_float16']:,} (float16) or {b['tokens_int8']:,} (int8 + "
              f"per-token scale); FDE {b['fde_float32']:,} (float32) or {b['fde_float16']:,} (float16). "
              f"FDE build: {build}. Spearman(FDE inner product, MaxSim) over 2,000 pages: "
              f"{r['spearman_fde_vs_maxsim']}."]
    c = r.get("centroids")
    if c:
        lines[-1] += (f" PLAID-style stage: {c['n']} k-means centroids, each page's set of centroid ids "
                      f"({c['bytes_per_page']} bytes per page), built in {c['build_s_per_1k_pages']} s per 1k pages.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
