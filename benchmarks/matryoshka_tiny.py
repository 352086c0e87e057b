"""Matryoshka on a real model: the shipped mmsearch-tiny fine-tuned with the MRL loss, then
evaluated by the eval harness at each (dim, precision, rescoring) setting (issue #25).

    python benchmarks/matryoshka_tiny.py [--work DIR] [--steps 300] [--sizes 48,96] [--control]

1. Data, made as the tiny model's recipe makes its own (mmsearch/models/tiny/train.sh `synth`):
   8k text->image scenes (20% of colour x shape pairs held out, as in training) and 8k pages.
2. Fine-tuning of the shipped model with the recipe's settings (`train.sh train`) with
   `--matryoshka SIZES` (the loss summed over those prefixes and the full 192 dims, as in the MRL
   paper); with --control also without it (same data, steps and seed: what the steps alone do).
3. `mmsearch eval mbeir` on a fresh synthetic collection (500 test queries per task, t2i and doc,
   local pools) for each setting: full 192-d float32; 4x smaller (48-d) as the encoder's
   truncation (no rescoring possible); 48-d first stage rescored from the full vectors
   (`--keep-full-vectors`); binary codes (32x smaller) with and without rescoring.
The shipped model is also cut to the smallest size (a copy of it whose config lists the sizes it
was never trained for): what truncation costs without the MRL loss.

Writes results/matryoshka_tiny.json and .md. About 25 minutes on 2 cores (40 with --control: a
fine-tune takes 14 minutes here, most of it decoding the training images).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
RECIPE = REPO / "mmsearch" / "models" / "tiny" / "train.sh"
SHIPPED = REPO / "mmsearch" / "models" / "tiny"
sys.path.insert(0, str(HERE))
from common import RESULTS, environment  # noqa: E402


def sh(*args, cwd=None):
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=cwd)


def recipe(work, *args):
    sh("bash", RECIPE, work, *args)


def evaluate(work: Path, model: Path, name: str, *options) -> dict:
    """R@1 / nDCG@10 per task from `mmsearch eval mbeir` (its JSON report)."""
    out = work / "evals" / name
    cmd = [sys.executable, "-m", "mmsearch", "eval", "mbeir", "--root", work / "eval", "--pool", "local",
           "--model", model, "--work", out, "--index", "Flat", "--no-progress", "--json", *options]
    print("+", " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    report = json.loads(subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout)
    rows = {}
    for r in report["results"]:
        task = "t2i" if "shapes" in r["pair"] else "doc"
        rows[task] = {"R@1": round(r["metrics"]["recall@1"], 4), "nDCG@10": round(r["metrics"]["ndcg@10"], 4)}
    return {"setting": name, "options": [str(o) for o in options], "seconds": round(time.perf_counter() - t0, 1),
            **rows}


def with_sizes(model: Path, out: Path, sizes: str) -> Path:
    """A copy of `model` whose config lists Matryoshka `sizes` it was not trained for: the
    baseline that shows what the MRL loss changes when vectors are cut the same way."""
    import shutil

    if not out.is_dir():
        shutil.copytree(model, out)
        config = json.loads((out / "config.json").read_text())
        config["matryoshka_dims"] = sorted(int(d) for d in sizes.split(","))
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="matryoshka-tiny")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sizes", default="48,96")
    ap.add_argument("--control", action="store_true", help="also fine-tune and evaluate without the MRL loss")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    small = int(args.sizes.split(",")[0])
    t0 = time.perf_counter()
    if not (work / "sc").is_dir():
        recipe(work, "synth", "8000", "--out", "sc", "--seed", "31", "--tasks", "t2i", "--holdout", "0.2")
        recipe(work, "synth", "8000", "--out", "doc", "--seed", "32", "--tasks", "doc")
    if not (work / "eval").is_dir():
        sh(sys.executable, "-m", "mmsearch", "datasets", "make", "synthetic", "--out", work / "eval", "--format",
           "mbeir", "--splits", "test", "--test-size", "500", "--seed", "2", "--tasks", "t2i,doc", "--holdout", "0.2",
           "--image-size", "112", "--no-progress")
    common = ["--data", "sc/train.parquet", "doc/train.parquet", "--model", SHIPPED, "--lr", "3e-4", "--warmup", "20",
              "--max-steps", str(args.steps), "--temperature", "0.025", "--seed", "5"]
    models = [("mrl", ["--matryoshka", args.sizes])] + ([("plain", [])] if args.control else [])
    for name, extra in models:
        if not (work / name / "config.json").is_file():
            recipe(work, "train", *common, "--out", name, *extra)
    rows = [evaluate(work, SHIPPED, "shipped, 192-d float32"),
            evaluate(work, with_sizes(SHIPPED, work / "shipped-cut", args.sizes), f"shipped (no MRL), {small}-d float32",
                     "--dim", str(small))]
    for name, _ in reversed(models):
        model = work / name
        rows.append(evaluate(work, model, f"{name}, 192-d float32"))
        if name == "mrl":
            rows.append(evaluate(work, model, f"mrl, {small}-d float32 (4x smaller)", "--dim", str(small)))
            rows.append(evaluate(work, model, f"mrl, {small}-d float32 + rescoring x4 from 192-d", "--dim", str(small),
                                 "--keep-full-vectors", "--precision", "float32"))
        rows.append(evaluate(work, model, f"{name}, binary 192-d (32x smaller), no rescoring", "--precision", "binary",
                             "--no-rescore"))
        rows.append(evaluate(work, model, f"{name}, binary 192-d + rescoring x4", "--precision", "binary"))
    report = {"benchmark": "matryoshka_tiny", "environment": environment(), "steps": args.steps, "sizes": args.sizes,
              "control": args.control,
              "eval": "synthetic M-BEIR collection, seed 2, 500 test queries per task, local pools, Flat index",
              "minutes": round((time.perf_counter() - t0) / 60, 1), "rows": rows}
    out = RESULTS / "matryoshka_tiny.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


def markdown(report) -> str:
    lines = ["| model, setting | t2i R@1 | t2i nDCG@10 | doc R@1 | doc nDCG@10 |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        t, d = r.get("t2i", {}), r.get("doc", {})
        lines.append(f"| {r['setting']} | {t.get('R@1')} | {t.get('nDCG@10')} | {d.get('R@1')} | {d.get('nDCG@10')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
