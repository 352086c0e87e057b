"""`mmsearch train`: contrastive (or generative) training of a VLM2Vec encoder on MMEB-train tables."""
from __future__ import annotations

import sys

from ..train.settings import LoraSettings, MiningSettings, ScratchSettings, TrainSettings
from ._common import add_family_arg, defaults, plural, print_json

TRAIN, LORA, MINING, SCRATCH = (defaults(c) for c in (TrainSettings, LoraSettings, MiningSettings, ScratchSettings))

EPILOG = """examples:
  mmsearch train --data train.parquet --model Qwen/Qwen2-VL-2B-Instruct --lora --out run1
  mmsearch train --data train.jsonl --model run1 --mine-negatives auto --mine-every 500 --out run2
  mmsearch train --data train.parquet --scratch hidden=192,layers=3 --vocab-size 900 --lr 5e-4 --warmup 50 \\
      --temperature 0.05 --learn-temperature --batch-size 96 --out tiny
  mmsearch train --data read.parquet --scratch --objective generate --out read   # a reading stage
  mmsearch train ... --out run1 --resume        # continue from the last checkpoint in run1
"""


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train an embedding model (InfoNCE, LoRA or full, GradCache, mined negatives)",
        description="Train a VLM2Vec encoder contrastively on MMEB-train tables (qry, qry_image_path, pos_text, "
                    "pos_image_path, optional neg_text, neg_image_path; JSONL or Parquet) and write a Hugging Face "
                    "checkpoint to --out that `load_encoder`/--model load.",
        epilog=EPILOG)
    _data_args(p)
    _model_args(p)
    _optim_args(p)
    _negative_args(p)
    _run_args(p)
    p.set_defaults(handler=run)


def _data_args(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True, metavar="TABLE", help="MMEB-train JSONL / Parquet file(s)")
    g.add_argument("--image-root", default=None, help="image paths are relative to this; unset: each table's folder")
    g.add_argument("--out", required=True, help="output directory: the model, train_log.jsonl, checkpoints/")


def _model_args(p) -> None:
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="starting checkpoint: Hugging Face id or local directory")
    add_family_arg(g)
    src.add_argument("--scratch", nargs="?", const="", metavar="SIZES",
                     help="a new Qwen2-VL, e.g. hidden=192,layers=3,heads=6,kv_heads=2,ffn=512,vision_embed=128,"
                          "vision_depth=3 (the default sizes)")
    g.add_argument("--vocab-size", type=int, default=SCRATCH["vocab_size"],
                   help="--scratch: BPE vocabulary trained on the data (default: %(default)s)")
    g.add_argument("--vocab-data", nargs="+", default=(), metavar="TABLE",
                   help="--scratch: more MMEB-train tables whose texts also train the BPE, e.g. a later "
                        "stage's data, so one tokenizer covers every stage")
    g.add_argument("--scratch-image-size", type=int, default=SCRATCH["image_size"],
                   help="--scratch: largest image side (pixels) (default: %(default)s)")
    g.add_argument("--init-from-config", action="store_true", help="--model's architecture with random weights")
    g.add_argument("--lora", action="store_true", help="train a LoRA adapter; unset: full fine-tuning")
    g.add_argument("--lora-rank", type=int, default=LORA["rank"], help="LoRA rank r (default: %(default)s)")
    g.add_argument("--lora-alpha", type=float, default=LORA["alpha"],
                   help="LoRA scaling alpha (the update is alpha/r) (default: %(default)s)")
    g.add_argument("--lora-dropout", type=float, default=LORA["dropout"], help="dropout on the LoRA input (default: %(default)s)")
    g.add_argument("--dora", action="store_true", help="weight-decomposed LoRA (DoRA)")
    g.add_argument("--lora-targets", default=None,
                   help="regex over module names, or a comma-separated list; unset: the language model's "
                        "attention and MLP projections")
    g.add_argument("--freeze", default=None, metavar="REGEX",
                   help="keep the parameters whose names match fixed, e.g. '^model\\.language_model\\.' to "
                        "teach only the vision tower; unset: train all (or the LoRA adapters)")
    g.add_argument("--save-adapter", action="store_true", help="write the LoRA adapter instead of merged weights")


def _optim_args(p) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=TRAIN["batch_size"], help="queries per contrastive batch (default: %(default)s)")
    g.add_argument("--chunk-size", type=int, default=None, help="GradCache sub-batch size; unset: no GradCache")
    g.add_argument("--grad-accum", type=int, default=TRAIN["grad_accum"],
                   help="contrastive batches per optimizer step (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps; unset: --epochs passes over the data")
    g.add_argument("--epochs", type=float, default=TRAIN["epochs"],
                   help="passes over the data when --max-steps is unset (default: %(default)s)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (AdamW); unset: 2e-5 to fine-tune, 5e-4 for --scratch/--init-from-config")
    g.add_argument("--weight-decay", type=float, default=TRAIN["weight_decay"],
                   help="AdamW weight decay of weight matrices (default: %(default)s)")
    g.add_argument("--warmup", type=float, default=TRAIN["warmup"],
                   help="a fraction of the steps (< 1) or a step count (default: %(default)s)")
    g.add_argument("--schedule", choices=("cosine", "linear", "constant"), default=TRAIN["schedule"],
                   help="decay after warmup (default: %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=TRAIN["max_grad_norm"], help="0 disables clipping (default: %(default)s)")
    g.add_argument("--objective", choices=("contrastive", "generate"), default=TRAIN["objective"],
                   help="contrastive: InfoNCE; generate: next-token prediction of the positive's text given the "
                        "query (e.g. page image -> its title, a reading stage) (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=TRAIN["temperature"],
                   help="InfoNCE temperature (initial value if learnt) (default: %(default)s)")
    g.add_argument("--learn-temperature", action="store_true", help="learn it (log-parameterised)")
    g.add_argument("--matryoshka", type=_sizes, default=(), metavar="SIZES",
                   help="Matryoshka sizes, e.g. 64,128,256: the loss summed over those prefixes of the embeddings "
                        "(MRL), so an index may store them truncated (--dim)")


def _negative_args(p) -> None:
    g = p.add_argument_group("hard negatives")
    g.add_argument("--no-data-negatives", action="store_true", help="ignore neg_text / neg_image_path")
    g.add_argument("--per-dataset-batches", action="store_true",
                   help="each batch from one dataset (the rows' `dataset` column, else their table), so in-batch "
                        "negatives are of the same task; datasets interleave in proportion to their size")
    g.add_argument("--distill-from", default=None, metavar="TEACHER",
                   help="a model (e.g. the one before this stage) whose embeddings the --distill-data rows keep: "
                        "their queries and positives add weight * (1 - cos(model, teacher)) to the loss, so a "
                        "skill learnt before is not forgotten")
    g.add_argument("--distill-data", nargs="+", default=[], metavar="TABLE",
                   help="the --data tables to distil (default: all)")
    g.add_argument("--distill-weight", type=float, default=TRAIN["distill_weight"],
                   help="weight of the distillation term (default: %(default)s)")
    g.add_argument("--mine-negatives", default=None, metavar="INDEX_OR_AUTO",
                   help="'auto' (index the data's candidates) or an mmsearch index of the candidates")
    g.add_argument("--mine-every", type=int, default=MINING["every"],
                   help="re-mine every N steps (0: once, at the start) (default: %(default)s)")
    g.add_argument("--mine-k", type=int, default=MINING["k"],
                   help="best non-positive hits kept per query (default: %(default)s)")
    g.add_argument("--mine-per-query", type=int, default=MINING["per_query"],
                   help="mined negatives drawn per query and step (default: %(default)s)")


def _run_args(p) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=TRAIN["seed"],
                   help="seeds weights (LoRA, scratch), data order, dropout (default: %(default)s)")
    g.add_argument("--device", default=TRAIN["device"], help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; unset: torch's default (1 is fastest for tiny models on a busy machine)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=TRAIN["precision"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU (default: %(default)s)")
    g.add_argument("--save-every", type=int, default=TRAIN["save_every"],
                   help="resumable checkpoint every N steps (default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=int, default=TRAIN["keep_checkpoints"],
                   help="most recent checkpoints kept (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--log-every", type=int, default=TRAIN["log_every"],
                   help="log loss / lr / throughput every N steps (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def parse_sizes(text: str):
    """'hidden=192,layers=3' -> ScratchSettings (other sizes at their defaults)."""
    from ..errors import InputError
    from ..train import ScratchSettings

    valid = [f for f in ScratchSettings.__dataclass_fields__ if f not in ("vocab_size", "image_size")]
    sizes = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = part.partition("=")
        if key not in valid or not value.strip().isdigit():
            raise InputError(f"--scratch {part!r}: expected NAME=INT with NAME one of {', '.join(valid)}")
        sizes[key] = int(value)
    return sizes


def _sizes(text: str):
    """An argparse `type`: '64,128,256' -> (64, 128, 256)."""
    import argparse

    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts or not all(t.isdigit() and int(t) > 0 for t in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive sizes separated by commas, e.g. 64,128,256")
    return tuple(int(t) for t in parts)


def settings_from_args(args):
    from ..train import LoraSettings, MiningSettings, ScratchSettings, TrainSettings

    lora = None
    if args.lora:
        targets = args.lora_targets
        if targets and "," in targets:
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        lora = LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, dora=args.dora,
                            **({"target_modules": targets} if targets else {}))
    scratch = None
    if args.scratch is not None:
        scratch = ScratchSettings(vocab_size=args.vocab_size, image_size=args.scratch_image_size,
                                  **parse_sizes(args.scratch))
    mining = None
    if args.mine_negatives:
        mining = MiningSettings(source=args.mine_negatives, every=args.mine_every, k=args.mine_k,
                                per_query=args.mine_per_query)
    return TrainSettings(
        data=tuple(args.data), out=args.out, model=args.model, family=args.family, image_root=args.image_root,
        init="config" if args.init_from_config else "pretrained", scratch=scratch,
        vocab_data=tuple(args.vocab_data), lora=lora,
        objective=args.objective, freeze=args.freeze, save_adapter=args.save_adapter, batch_size=args.batch_size,
        chunk_size=args.chunk_size, grad_accum=args.grad_accum, max_steps=args.max_steps, epochs=args.epochs,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup if args.warmup < 1 else int(args.warmup),
        schedule=args.schedule, max_grad_norm=args.max_grad_norm or None, temperature=args.temperature,
        learn_temperature=args.learn_temperature, matryoshka=args.matryoshka, data_negatives=not args.no_data_negatives, mining=mining,
        per_dataset_batches=args.per_dataset_batches, distill_from=args.distill_from,
        distill_data=tuple(args.distill_data), distill_weight=args.distill_weight,
        seed=args.seed, device=args.device, threads=args.threads, precision=args.precision, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, log_every=args.log_every,
        show_progress=not args.no_progress)


def run(args) -> int:
    from ..train import train

    result = train(settings_from_args(args))
    if args.json:
        print_json(result.to_dict())
    else:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        print(f"trained {plural(result.steps, 'step')} on {plural(result.examples, 'example')} ({result.skipped} skipped) in "
              f"{result.seconds:.0f} s, {result.sequences_per_second:.0f} seq/s; final loss {loss}, temperature "
              f"{result.temperature:.4f} -> {result.out}", file=sys.stderr)
    return 0
