"""Resident memory an index adds to a process that already searches (issue #25's RAM figure).

    python benchmarks/compact_rss.py [--n 200000] [--dim 1024]

`benchmarks/compact.py` measures the resident set of a fresh process right after `open_index`,
which also counts the libraries the first open and search load (pyarrow's compute kernels,
lmdb, ...: ~80 MB of shared objects, the same for every index). Here each child process first
opens and searches a 1,000-row index of the same kind, so those are in the baseline; then it
opens the big index, runs one search (k 10, the index's oversampling) and reads VmRSS
(anonymous and file-backed) and the pages of vectors.npy it maps: rescoring reads ~40 rows,
but the kernel maps whole large folios of a file it holds in its page cache (~1.8 MB per row
here; reclaimable page cache, not the process's own memory). Vector values do not change
memory: random unit vectors. Writes results/compact_rss.json and .md.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, environment, resident_memory  # noqa: E402

SETTINGS = [("float32", {}), ("binary", {"precision": "binary"}),
            ("binary, int8 rescoring copy", {"precision": "binary", "rescore_from": "int8"}),
            ("int8", {"precision": "int8"})]


def child(small: str, big: str) -> None:
    from mmsearch.query import open_index

    q = np.random.default_rng(1).standard_normal((1, 1024)).astype(np.float32)
    warm = open_index(small)
    warm.search_vectors(q[:, :warm.dim], 10)
    before = resident_memory()
    index = open_index(big)
    index.search_vectors(q[:, :index.dim], 10)
    after = resident_memory()
    print(json.dumps({k: after[k] - before[k] for k in after}))


def build(path: Path, x: np.ndarray, options: dict) -> None:
    from mmsearch.indexer.vectors import index_vectors

    index_vectors(path, x, [str(i) for i in range(len(x))], index="Flat", shard_size=len(x), **options)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    work = Path(tempfile.mkdtemp(prefix="mmsearch-rss-"))
    rows = []
    try:
        for name, options in SETTINGS:
            small, big = work / f"{len(rows)}-small", work / f"{len(rows)}-big"
            build(small, x[:1000], options)
            build(big, x, options)
            out = subprocess.run([sys.executable, __file__, "--child", str(small), str(big)], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append({"setting": name, **json.loads(out)})
            print(rows[-1], flush=True)
            shutil.rmtree(small)
            shutil.rmtree(big)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["VmRSS"] - rows[0]["mapped_vectors.npy"]
    for r in rows:  # the index itself: what is resident beside the rows of vectors.npy a rescoring read
        r["index_resident"] = r["VmRSS"] - r["mapped_vectors.npy"]
        r["less_than_float32"] = round(base / max(r["index_resident"], 1), 1)
    report = {"environment": environment(), "n": args.n, "dim": args.dim, "rows": rows}
    (RESULTS / "compact_rss.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "compact_rss.md").write_text(markdown(report) + "\n")
    print(markdown(report))


def markdown(report) -> str:
    mb = 1 << 20
    lines = ["| setting | RSS added, MiB (anonymous; file-backed) | of it vectors.npy rows read by rescoring | "
             "the index without them, MiB | x less than float32 |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['setting']} | {r['VmRSS'] / mb:.1f} ({r['RssAnon'] / mb:.1f}; {r['RssFile'] / mb:.1f}) | "
                     f"{r['mapped_vectors.npy'] / mb:.1f} | {r['index_resident'] / mb:.1f} | {r['less_than_float32']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
