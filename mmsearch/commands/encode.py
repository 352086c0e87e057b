"""`mmsearch encode`: embed the rows of a JSONL/CSV/Parquet file to a .npy matrix plus ids."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import add_model_args, encoder_options, plural, print_json

CHUNK = 256  # rows decoded and encoded together; bounds memory on any input size


def register(sub) -> None:
    p = sub.add_parser(
        "encode", help="embed rows (id, text, image) to OUT.npy + OUT.ids.txt",
        description="Embed each row of INPUT (JSONL, CSV or Parquet with columns id, text, image; image paths "
                    "relative to the file) and write OUT.npy (float32, L2-normalised rows), OUT.ids.txt (one id "
                    "per line, row-aligned) and, when rows are rejected, OUT.errors.jsonl.")
    p.add_argument("input", help="JSONL / CSV / Parquet file")
    p.add_argument("--out", required=True, help="output prefix (OUT.npy, OUT.ids.txt)")
    add_model_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--instruction", default=None, help="instruction text for every row")
    g.add_argument("--task", default=None, help="task name (see `mmsearch tasks`)")
    p.add_argument("--side", choices=("query", "candidate"), default="candidate",
                   help="embed the rows as queries or candidates: which of the task's instructions, and the "
                        "family's prompt where it has one per side")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(handler=run)


def _instruction(args, enc=None):
    """The --instruction, or --task's for --side: through the model's own prompts once loaded."""
    if args.task is None:
        return args.instruction
    if enc is not None:
        return enc.task_instruction(args.task, args.side)
    from ..tasks import resolve_instruction

    return resolve_instruction(task=args.task, side=args.side)  # an unknown task fails before the model loads


def _out_paths(prefix: str):
    base = prefix[:-4] if prefix.endswith(".npy") else prefix
    return Path(base + ".npy"), Path(base + ".ids.txt"), Path(base + ".errors.jsonl")


def run(args) -> int:
    from tqdm.auto import tqdm

    from .. import load_encoder
    from ..encoders.base import to_request
    from ..errors import MMSearchError
    from ..indexer.sources import open_source

    _instruction(args)
    enc = load_encoder(args.model, device=args.device, dtype=args.dtype, **encoder_options(args))
    instruction = _instruction(args, enc)
    npy_path, ids_path, err_path = _out_paths(args.out)
    npy_path.parent.mkdir(parents=True, exist_ok=True)
    ids, errors, seen = [], [], set()
    start = time.perf_counter()
    bar = tqdm(unit="item", desc="encode", disable=args.no_progress, dynamic_ncols=True)
    with tempfile.TemporaryFile(dir=npy_path.parent) as raw:
        chunk = []

        def flush():
            vecs = enc.encode_requests([r for _, r in chunk], batch_size=args.batch_size, show_progress=False)
            raw.write(np.ascontiguousarray(vecs, dtype=np.float32).tobytes())
            ids.extend(i for i, _ in chunk)
            bar.update(len(chunk))
            chunk.clear()

        for rec in open_source(args.input):
            if rec.item is None:
                errors.append({"id": rec.id, "source": rec.where, "reason": rec.error})
                continue
            if rec.item.id in seen:
                errors.append({"id": rec.item.id, "source": rec.where, "reason": "duplicate id"})
                continue
            try:
                chunk.append((rec.item.id, to_request(rec.item, instruction, enc.max_pixels, len(ids), args.side)))
                seen.add(rec.item.id)
            except MMSearchError as e:
                errors.append({"id": rec.item.id, "source": rec.where, "reason": str(e)})
            if len(chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
        bar.close()
        _write_outputs(raw, len(ids), enc.dim, npy_path, ids, ids_path, errors, err_path)
    summary = {"input": args.input, "model": args.model, "instruction": instruction, "encoded": len(ids),
               "rejected": len(errors), "dim": enc.dim, "vectors": str(npy_path), "ids": str(ids_path),
               "errors": str(err_path) if errors else None, "seconds": round(time.perf_counter() - start, 3)}
    if args.json:
        print_json(summary)
    else:
        if errors:
            print(f"rejected rows are listed in {err_path}", file=sys.stderr)
        print(f"encoded {plural(len(ids), 'row')} ({len(errors)} rejected) in {summary['seconds']:.1f} s -> "
              f"{npy_path}, {ids_path}", file=sys.stderr)
    return 0


def _write_outputs(raw, n, dim, npy_path, ids, ids_path, errors, err_path) -> None:
    raw.flush()
    raw.seek(0)
    out = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.float32, shape=(n, dim))
    rows_per_block = max(1, (64 << 20) // (4 * dim))
    for start in range(0, n, rows_per_block):
        block = np.frombuffer(raw.read(4 * dim * min(rows_per_block, n - start)), dtype=np.float32)
        out[start:start + len(block) // dim] = block.reshape(-1, dim)
    out.flush()
    del out
    ids_path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    if errors:
        err_path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors), encoding="utf-8")
    elif err_path.exists():
        err_path.unlink()
