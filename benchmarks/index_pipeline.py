"""Indexing pipeline against a plain batched loop and against the model alone, side by side.

    python benchmarks/index_pipeline.py [--quick] [--n 1200] [--repeats 3]

The model is a randomly initialised Qwen2-VL big enough that its forward pass
dominates (hidden 256, 4 layers, vision 128 x 4); images are 112-160 px JPEG
files on disk, mixed with captions. On the same corpus and the same loaded model,
each repeat measures, in turn:
- plain loop: read -> decode -> encode a batch -> next batch, nothing overlapped
  (torch at its default threads);
- model alone: the same items decoded beforehand, encoded in the pipeline's
  chunks (`CHUNK_BATCHES` batches, grouped by modality): the model's speed with
  nothing else to do, the ceiling of any pipeline;
- pipeline: `build_index` (its thread budget, cache, shard writer and faiss
  index included; items/s over the run's wall time).
Reported: medians over the repeats, `speedup` = pipeline / plain loop and
`efficiency` = pipeline / model alone. Writes benchmarks/results/index_pipeline.json.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.indexer.build import build_index  # noqa: E402
from mmsearch.indexer.pipeline import CHUNK_BATCHES  # noqa: E402
from mmsearch.indexer.prepare import prepare  # noqa: E402
from mmsearch.indexer.settings import DEFAULT_INSTRUCTIONS  # noqa: E402
from mmsearch.indexer.sources import iter_sources  # noqa: E402
from mmsearch.indexer.threads import available_cores, plan_threads  # noqa: E402
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


def plain_loop(path: Path, enc, batch: int) -> float:
    """items/s of the obvious loop: a batch is read, decoded and encoded before the next is read."""
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


def decoded_requests(path: Path) -> list:
    """Every item decoded and resolved as the pipeline's decode stage makes it (done once, untimed)."""
    return [prepare(rec, DEFAULT_INSTRUCTIONS, None, False).request for rec in iter_sources([str(path)])]


def model_alone(requests: list, enc, batch: int) -> float:
    """items/s of the model on pre-decoded inputs, in the pipeline's chunks."""
    chunk = batch * CHUNK_BATCHES
    t0 = time.perf_counter()
    for start in range(0, len(requests), chunk):
        enc.encode_requests(requests[start:start + chunk], batch_size=batch, show_progress=False)
    return len(requests) / (time.perf_counter() - t0)


def pipeline(path: Path, enc, out: Path, batch: int, workers) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a fresh index: no embedding-cache hits
    s = build_index([path], out, encoder=enc, batch_size=batch, workers=workers, thumbnails=False).stats
    return {"items_per_s": s["items_per_second"], "model_busy_over_wall": s["pipeline_efficiency"],
            "torch_threads": s["torch_threads"], "decode_workers": s["workers"]}


def measure(path: Path, enc, work: Path, grid, repeats: int) -> list:
    """Medians per (batch, workers) of the three throughputs, measured interleaved in each repeat."""
    requests = decoded_requests(path)
    samples = {cfg: {"plain": [], "alone": [], "pipe": []} for cfg in grid}
    last = {}
    for _ in range(repeats):
        for batch, workers in grid:
            s = samples[(batch, workers)]
            s["plain"].append(plain_loop(path, enc, batch))
            s["alone"].append(model_alone(requests, enc, batch))
            last[(batch, workers)] = pipeline(path, enc, work / "index", batch, workers)
            s["pipe"].append(last[(batch, workers)]["items_per_s"])
    rows = []
    for (batch, workers), s in samples.items():
        plain, alone, pipe = (statistics.median(s[k]) for k in ("plain", "alone", "pipe"))
        rows.append({"batch_size": batch, "workers": "auto" if workers is None else workers,
                     "torch_threads": last[(batch, workers)]["torch_threads"],
                     "decode_workers": last[(batch, workers)]["decode_workers"],
                     "plain_loop_items_per_s": round(plain, 2), "model_alone_items_per_s": round(alone, 2),
                     "items_per_s": round(pipe, 2), "speedup_vs_plain_loop": round(pipe / plain, 3),
                     "efficiency": round(pipe / alone, 3),
                     "samples": {k: [round(x, 1) for x in v] for k, v in s.items()}})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="400 items, batch 16 only")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "index_pipeline.json"))
    args = ap.parse_args()
    n = args.n or (400 if args.quick else 1200)
    # (batch, workers): None is the automatic budget; 1 shows the alternative split on a small machine
    grid = [(16, None)] if args.quick else [(16, None), (16, 1), (8, None), (32, None)]
    import torch

    budget = plan_threads(available_cores())
    print(budget.describe())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model("qwen2_vl", work / "model", size=SIZE)
        path = make_corpus(work / "corpus", n)
        enc = mmsearch.load_encoder(model, device="cpu")
        enc.encode(["warm up"], show_progress=False)
        rows = measure(path, enc, work, grid, args.repeats)
        per_item = None if args.quick else plain_loop(path, enc, 1)
    main_row = rows[0]
    result = {
        "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
        "cores": available_cores(), "torch_threads_default": torch.get_num_threads(), "torch": torch.__version__,
        "budget": budget.describe(), "model": f"random qwen2_vl {SIZE}", "items": n, "repeats": args.repeats,
        "pipeline": rows,
        "plain_loop_items_per_s": main_row["plain_loop_items_per_s"],
        "model_alone_items_per_s": main_row["model_alone_items_per_s"],
        "pipeline_items_per_s": main_row["items_per_s"],
        "speedup_vs_plain_loop": main_row["speedup_vs_plain_loop"], "efficiency": main_row["efficiency"],
        "naive_per_item_items_per_s": None if per_item is None else round(per_item, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| batch | workers (torch threads) | plain loop | model alone | pipeline | vs plain loop | efficiency |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['workers']}: {r['decode_workers']} ({r['torch_threads']}) | "
              f"{r['plain_loop_items_per_s']} | {r['model_alone_items_per_s']} | {r['items_per_s']} | "
              f"{r['speedup_vs_plain_loop']}x | {r['efficiency']} |")
    if per_item is not None:
        print(f"\none item at a time: {result['naive_per_item_items_per_s']} items/s")


if __name__ == "__main__":
    main()
