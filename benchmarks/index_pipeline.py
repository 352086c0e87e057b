"""Indexing pipeline: items/s, pipeline efficiency (model busy / wall) and speedup over naive loops.

    python benchmarks/index_pipeline.py [--quick] [--n 800]

The model is a randomly initialised Qwen2-VL big enough that its forward pass
dominates (hidden 256, 4 layers, vision 128 x 4); images are 112-160 px JPEG
files on disk, mixed with captions. Baselines on the same corpus and model:
- naive per item: read -> decode -> forward(1 item) -> append, one after another;
- naive batched: the same, a batch at a time, with no overlap between stages.
Writes benchmarks/results/index_pipeline.json and prints a Markdown table.
"""
import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.indexer.build import build_index  # noqa: E402
from mmsearch.indexer.settings import DEFAULT_INSTRUCTIONS  # noqa: E402
from mmsearch.testing import QwenSize, build_tiny_model  # noqa: E402

SIZE = QwenSize(hidden=256, layers=4, heads=4, kv_heads=2, ffn=1024, vision_embed=128, vision_depth=4, vision_heads=4)


def make_corpus(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        row = {"id": f"x{i}"}
        if i % 4 != 3:
            side = int(rng.integers(112, 161))
            arr = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "img" / f"{i}.jpg", quality=90)
            row["image"] = f"img/{i}.jpg"
        if i % 4 != 0:
            row["text"] = " ".join(rng.choice(["red", "blue", "square", "circle", "small", "large", "left"], 8))
        rows.append(json.dumps(row))
    (root / "items.jsonl").write_text("\n".join(rows) + "\n")
    return root / "items.jsonl"


def naive(path: Path, enc, batch: int) -> float:
    """Sequential baseline: no overlap between reading/decoding and the model."""
    from mmsearch.images import load_image

    t0 = time.perf_counter()
    out = []
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for start in range(0, len(rows), batch):
        items, instr = [], []
        for r in rows[start:start + batch]:
            img = load_image(str(path.parent / r["image"])) if "image" in r else None
            items.append(mmsearch.Item(id=r["id"], text=r.get("text"), image=img))
            mod = "image,text" if img is not None and r.get("text") else ("image" if img is not None else "text")
            instr.append(DEFAULT_INSTRUCTIONS[mod])
        out.append(enc.encode(items, instruction=instr, batch_size=batch, show_progress=False))
    np.concatenate(out)
    return len(rows) / (time.perf_counter() - t0)


def run_pipeline(path: Path, model: Path, work: Path, batch: int, workers: int) -> dict:
    out = work / f"idx-{batch}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    r = build_index([path], out, model=str(model), batch_size=batch, workers=workers, thumbnails=False)
    s = r.stats
    return {"batch_size": batch, "workers": workers, "items_per_s": s["items_per_second"],
            "efficiency": s["pipeline_efficiency"], "busy": s["busy_seconds"], "wall": s["wall_seconds"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="400 items, fewer configurations")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "index_pipeline.json"))
    args = ap.parse_args()
    n = args.n or (400 if args.quick else 1200)
    grid = [(16, 2)] if args.quick else [(8, 1), (8, 2), (16, 1), (16, 2), (32, 2)]
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model("qwen2_vl", work / "model", size=SIZE)
        path = make_corpus(work / "corpus", n)
        enc = mmsearch.load_encoder(model, device="cpu")
        enc.encode(["warm up"], show_progress=False)
        pipe = [run_pipeline(path, model, work, b, w) for b, w in grid]
        base_item = naive(path, enc, 1)
        base_batch = naive(path, enc, 16)
    best = max(pipe, key=lambda r: r["items_per_s"])
    result = {
        "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": f"random qwen2_vl {SIZE}", "items": n, "pipeline": pipe,
        "naive_per_item_items_per_s": round(base_item, 2), "naive_batched16_items_per_s": round(base_batch, 2),
        "speedup_vs_naive_per_item": round(best["items_per_s"] / base_item, 2),
        "speedup_vs_naive_batched": round(best["items_per_s"] / base_batch, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| batch | workers | items/s | efficiency |\n|---|---|---|---|")
    for r in pipe:
        print(f"| {r['batch_size']} | {r['workers']} | {r['items_per_s']} | {r['efficiency']} |")
    print(f"\nnaive per item: {result['naive_per_item_items_per_s']} items/s; naive batched (16): "
          f"{result['naive_batched16_items_per_s']} items/s; best pipeline speedup: "
          f"{result['speedup_vs_naive_per_item']}x / {result['speedup_vs_naive_batched']}x")


if __name__ == "__main__":
    main()
