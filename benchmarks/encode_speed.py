"""Encoder throughput (items/s) on a tiny model: text-only, image-only and mixed, at several batch sizes.

    python benchmarks/encode_speed.py [--kind qwen2_vl] [--n 256] [--batch-sizes 1 32]

Writes benchmarks/results/encode_speed.json and prints a Markdown table. Timings
use one warm-up pass, then the best of --repeat runs.
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.testing import build_tiny_model  # noqa: E402

WORDS = "red green blue small large square circle triangle left right top bottom two three one".split()


def make_inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(3, 16))) for _ in range(n)]
    images = [Image.fromarray(rng.integers(0, 256, size=(int(rng.integers(56, 112)), int(rng.integers(56, 112)), 3),
                                           dtype=np.uint8)) for _ in range(n)]
    mixed = [t if i % 3 == 0 else im if i % 3 == 1 else mmsearch.Query(text=t, image=im)
             for i, (t, im) in enumerate(zip(texts, images))]
    return {"text": texts, "image": images, "mixed": mixed}


def time_encode(enc, inputs, batch_size, repeat):
    enc.encode(inputs[: max(batch_size, 8)], batch_size=batch_size, show_progress=False)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        enc.encode(inputs, batch_size=batch_size, show_progress=False)
        best = min(best, time.perf_counter() - t0)
    return len(inputs) / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="qwen2_vl")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "encode_speed.json"))
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        enc = mmsearch.load_encoder(build_tiny_model(args.kind, Path(tmp) / args.kind), device="cpu")
        sets = make_inputs(args.n)
        rows = [{"modality": m, "batch_size": bs, "items_per_s": round(time_encode(enc, sets[m], bs, args.repeat), 1)}
                for m in sets for bs in args.batch_sizes]
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "model": f"tiny {args.kind}",
              "n": args.n, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| modality | batch | items/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['modality']} | {r['batch_size']} | {r['items_per_s']} |")


if __name__ == "__main__":
    main()
