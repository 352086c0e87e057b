"""Training-step and image-encoding speed of the built-in tiny model, with mmsearch's
faster Qwen2-VL vision tower (`mmsearch.encoders.qwen_vision`) and with transformers' own.

    python benchmarks/train_speed.py [--steps 10] [--threads 2]

Trains on a fresh synthetic table (text -> image, edits, question -> page; 112 px) with
the tiny model's recipe settings (batch 96, learnable temperature, AdamW) in bf16 autocast
and fp32, timing --steps steps after two warm-up steps; then encodes 256 page images at
batch 32. Writes benchmarks/results/train_speed.json and prints a Markdown table.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.encoders.loading import DEFAULT_MODEL  # noqa: E402
from mmsearch.encoders.qwen_vision import stock_vision  # noqa: E402
from mmsearch.train import TrainSettings  # noqa: E402
from mmsearch.train.trainer import Trainer  # noqa: E402


def make_table(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "mmsearch", "datasets", "make", "synthetic", "--format", "train",
                    "--size", "400", "--tasks", "t2i,composed,doc", "--image-size", "112", "--seed", "7",
                    "--out", str(root / "data"), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return root / "data" / "train.parquet"


def time_steps(table: Path, out: Path, precision: str, stock: bool, steps: int, threads: int) -> float:
    settings = TrainSettings(data=(str(table),), out=str(out), model=DEFAULT_MODEL, batch_size=96, lr=1e-3,
                             max_steps=steps + 2, learn_temperature=True, precision=precision, threads=threads,
                             seed=0, log_every=1000)
    torch.manual_seed(0)
    trainer = Trainer(settings)
    if stock:
        stock_vision(trainer.encoder.model)
    for _ in range(2):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - t0) / steps


def encode_rate(table_dir: Path, stock: bool) -> float:
    enc = mmsearch.load_encoder(DEFAULT_MODEL, device="cpu")
    if stock:
        stock_vision(enc.model)
    from PIL import Image

    pages = sorted((table_dir / "images").rglob("*.png"))[:256]
    images = [Image.open(p).convert("RGB") for p in pages]
    enc.encode(images[:32], batch_size=32, show_progress=False)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        enc.encode(images, batch_size=32, show_progress=False)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = make_table(root)
        for precision in ("bf16", "fp32"):
            for stock in (True, False):
                s = time_steps(table, root / f"run-{precision}-{stock}", precision, stock, args.steps, args.threads)
                rows.append({"what": f"train step ({precision}, batch 96)", "vision": "transformers" if stock
                             else "mmsearch", "seconds_per_step": round(s, 3)})
        for stock in (True, False):
            rows.append({"what": "encode 256 images (fp32, batch 32)", "vision": "transformers" if stock
                         else "mmsearch", "items_per_s": round(encode_rate(table.parent, stock), 1)})
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
              "threads": args.threads, "torch": torch.__version__, "model": DEFAULT_MODEL, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| what | vision tower | s/step or items/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['vision']} | {r.get('seconds_per_step', r.get('items_per_s'))} |")


if __name__ == "__main__":
    main()
