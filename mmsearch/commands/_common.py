"""Helpers shared by subcommands: JSON output and short tables."""
from __future__ import annotations

import json
import sys
from typing import Iterable, Sequence

from ..errors import UsageError  # noqa: F401  (commands raise it for a wrong command line: exit 2)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def clip(text, width: int) -> str:
    text = "" if text is None else str(text).replace("\n", " ")
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def print_table(headers: Sequence[str], rows: Iterable[Sequence], widths: Sequence[int]) -> None:
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*headers).rstrip())
    for row in rows:
        print(fmt.format(*(clip(v, w) for v, w in zip(row, widths))).rstrip())


def defaults(settings_cls) -> dict:
    """A settings dataclass's field defaults: the CLI shows and uses these, never a copy."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(settings_cls) if f.default is not dataclasses.MISSING}


def add_family_arg(p, dim: bool = False) -> None:
    """--family (and --dim): how a checkpoint's outputs become vectors."""
    from ..encoders.recipes import FAMILIES

    p.add_argument("--family", default=None, choices=sorted(FAMILIES), metavar="FAMILY",
                   help="the model's embedding family: " + ", ".join(FAMILIES) + " (default: the checkpoint's "
                        "own mmsearch.json, a known checkpoint's, else its backbone's)")
    if dim:
        p.add_argument("--dim", type=int, default=None,
                       help="truncate vectors to this Matryoshka size and re-normalise (families that list sizes)")
        p.add_argument("--adapter", default=None,
                       help="the family's task adapter, e.g. jina-v4's retrieval (default), text-matching or code")


def encoder_options(args) -> dict:
    """load_encoder keyword arguments from --family/--dim/--adapter."""
    keys = ("family", "dim", "adapter")
    return {k: getattr(args, k, None) for k in keys if getattr(args, k, None) is not None}


def add_model_args(p) -> None:
    p.add_argument("--model", default=None,
                   help="Hugging Face id or local checkpoint directory (default: the built-in mmsearch-tiny)")
    add_family_arg(p, dim=True)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--batch-size", type=int, default=None, help="inputs per forward pass")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def plural(n: int, word: str, many: str = None) -> str:
    """'1 shard', '2 shards', '0 items'; `many` for irregular plurals."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def int_range(lo: int, hi: int = None):
    """An argparse `type`: an int in [lo, hi]; otherwise a usage error (exit 2) naming the value."""
    import argparse

    want = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    return parse


def add_compact_args(p, build: dict) -> None:
    """--precision, --oversample, --no-rescore, --keep-full-vectors: the compact codes of an
    index build (`build`: BuildSettings' defaults)."""
    p.add_argument("--precision", default=None, choices=("float32", "float16", "int8", "binary", "auto"),
                   help="codes the first stage searches (int8: per-dimension ranges calibrated on the corpus; "
                        "binary: sign bits, Hamming); candidates are then rescored from the stored vectors. auto: "
                        "--memory-budget picks dim and precision by measuring (default: float32, auto when "
                        "--index auto and the float32 vectors exceed --memory-budget)")
    p.add_argument("--oversample", type=float, default=build["oversample"],
                   help="compact codes: first-stage candidates per hit to rescore (default: %(default)s)")
    p.add_argument("--no-rescore", dest="rescore", action="store_false",
                   help="compact codes: return the first stage's order, without rescoring")
    p.add_argument("--rescore-from", default=build["rescore_from"], choices=("float16", "int8"),
                   help="compact codes: how the stored full vectors are kept for rescoring: float16 (default), "
                        "or int8 codes (half the bytes; ranges calibrated on the corpus)")
    p.add_argument("--keep-full-vectors", dest="keep_full", action="store_true",
                   help="with --dim: encode at the model's full size, index the truncation, and keep the full "
                        "vectors on disk (memory-mapped, not in RAM) for rescoring")


def compact_options(args) -> dict:
    """BuildSettings keyword arguments from the options `add_compact_args` adds."""
    return {"precision": args.precision, "oversample": args.oversample, "rescore": args.rescore,
            "rescore_from": args.rescore_from, "keep_full": args.keep_full}

