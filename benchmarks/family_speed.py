"""Encode throughput (items/s) of each model family on its tiny checkpoint, text and images,
with the image tokens each family's own pixel bounds give (GME upscales to >= 256 tokens).

    python benchmarks/family_speed.py [--n 128] [--batch-size 32]

Writes benchmarks/results/family_speed.{json,md} and prints the Markdown table. Same timing
protocol as encode_speed.py (one warm-up pass, best of --repeat runs).
"""
import argparse
import tempfile
from pathlib import Path

from common import environment, save
from encode_speed import make_inputs, time_encode

import mmsearch
from mmsearch.encoders import Request
from mmsearch.testing import build_tiny_model

FAMILY_KIND = {"vlm2vec": "qwen2_vl", "mmsearch": "qwen2_vl", "gme": "qwen2_vl",
               "qwen3_vl_embedding": "qwen3_vl", "jina_v4": "qwen2_5_vl"}


def image_tokens(enc, image) -> int:
    batch = enc.processor_inputs([Request(text=None, image=image, instruction=None)])
    return int((batch["input_ids"] == enc.model.config.image_token_id).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    sets = make_inputs(args.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, kind in FAMILY_KIND.items():
            enc = mmsearch.load_encoder(build_tiny_model(kind, Path(tmp) / kind), family=family, device="cpu")
            row = {"family": family, "backbone": kind, "image_tokens": image_tokens(enc, sets["image"][0])}
            for modality in ("text", "image"):
                row[modality] = round(time_encode(enc, sets[modality], args.batch_size, args.repeat), 1)
            rows.append(row)
    table = ["| family | tiny backbone | image tokens | text items/s | image items/s |", "|---|---|---|---|---|"]
    table += [f"| {r['family']} | {r['backbone']} | {r['image_tokens']} | {r['text']} | {r['image']} |" for r in rows]
    save("family_speed", dict(environment(), torch=torch.__version__, n=args.n, batch_size=args.batch_size,
                              rows=rows), "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
