"""One `mmsearch search` from the shell, end to end: the wall time of the whole process and
where it goes (the `-v` split: imports, model load, encode, search), for each query runtime.

    python benchmarks/cli_search.py [--repeat 5]

`--runtime numpy` (the CLI's default) embeds a text query without importing torch or
transformers; `--runtime torch` is what every search did before. Both search the same
index (`mmsearch demo`'s, built once into a temporary folder) with the built-in model.
Writes benchmarks/results/cli_search.{json,md}.
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment, save

MMSEARCH = [sys.executable, "-m", "mmsearch"]
SPLIT = re.compile(r"(cli start|imports|model load|encode|search) ([\d.]+) s")


def one_search(index: Path, runtime: str) -> dict:
    t = time.perf_counter()
    out = subprocess.run(MMSEARCH + ["search", str(index), "--text", "a red circle", "-v", "--runtime", runtime],
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return {"wall": wall, **{k: float(v) for k, v in SPLIT.findall(out.stderr)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(MMSEARCH + ["demo", "--out", tmp, "--no-progress", "-q"], check=True, capture_output=True)
        runs = {rt: [one_search(Path(tmp) / "index", rt) for _ in range(args.repeat)] for rt in ("torch", "numpy")}
    rows = {}
    for rt, samples in runs.items():
        keys = samples[0].keys()
        rows[rt] = {k: round(statistics.median(s.get(k, 0.0) for s in samples), 3) for k in keys}
    lines = ["| runtime | wall (s) | imports | model load | encode | search |", "|---|---|---|---|---|---|"]
    for rt, r in rows.items():
        lines.append(f"| {rt} | {r['wall']:.2f} | {r.get('imports', 0):.2f} | {r.get('model load', 0):.2f} | "
                     f"{r.get('encode', 0):.2f} | {r.get('search', 0):.2f} |")
    md = "\n".join(lines) + "\n"
    save("cli_search", dict(environment(), repeat=args.repeat, median=rows), md)
    print(md)


if __name__ == "__main__":
    main()
