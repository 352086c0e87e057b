"""`mmsearch eval mbeir|mmeb|beir|hybrid`: retrieval experiments with reports."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..indexer.settings import BuildSettings
from ._common import add_compact_args, add_family_arg, compact_options, defaults, encoder_options, plural, print_json


def register(sub) -> None:
    p = sub.add_parser("eval", help="run M-BEIR / MMEB evaluations",
                       description="Evaluate a model on M-BEIR- or MMEB-format collections.")
    esub = p.add_subparsers(dest="eval_command", metavar="BENCHMARK")
    m = esub.add_parser("mbeir", help="M-BEIR: local pools and the global union pool",
                        description="Index candidate pools, encode queries with their M-BEIR prompts, search, and "
                                    "report Recall@k (hit@k), nDCG@10 and MRR@10. Rerun to resume.")
    m.add_argument("--root", required=True, help="the M-BEIR root (query/, cand_pool/, qrels/, instructions/)")
    m.add_argument("--split", default="test", choices=("train", "val", "test"), help="query split (default: test)")
    m.add_argument("--pairs", nargs="+", default=None, help="e.g. visualnews_task0 cirr_task7 (default: all)")
    m.add_argument("--pool", choices=("local", "global", "both"), default="both",
                   help="candidate pools: each pair's local pool, the global union pool, or both (default)")
    m.add_argument("--prompt", choices=("first", "random"), default="first", help="which of the 4 prompts")
    m.add_argument("--seed", type=int, default=0, help="seed for --prompt random")
    m.add_argument("--index", default="auto", help="faiss index for the pools (auto, Flat, HNSW32, ...)")
    m.add_argument("--fresh", action="store_true", help="recompute pairs already finished in --work")
    add_compact_args(m, defaults(BuildSettings))  # pools indexed as compact codes: one --work per setting
    _common(m, "mbeir")
    m.set_defaults(handler=run_mbeir)
    e = esub.add_parser("mmeb", help="MMEB: each query against its own candidates (hit@1)")
    e.add_argument("--root", required=True, help="folder with <Dataset>/test.parquet|jsonl tables")
    e.add_argument("--datasets", nargs="+", default=None, help="dataset folders under --root (default: all)")
    e.add_argument("--image-root", default=None, help="image folder (default: ROOT/images)")
    _common(e, "mmeb")
    e.set_defaults(handler=run_mmeb)
    b = esub.add_parser("beir", help="BEIR / ViDoRe: a corpus (text or page images), queries and qrels",
                        description="Index a BEIR-format corpus (corpus.jsonl|parquet with text or images, "
                                    "queries.jsonl|parquet, qrels/SPLIT.tsv|parquet; ViDoRe v2's column names "
                                    "work too), search every judged query and report nDCG@5/@10 (graded "
                                    "gains), recall@k (the fraction of relevant documents found) and MRR@10. "
                                    "Rerun to resume.")
    b.add_argument("dir", metavar="DIR", help="the collection folder")
    b.add_argument("--split", default="test", help="qrels split: qrels/SPLIT.tsv (default: test)")
    b.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 100], metavar="K",
                   help="recall@k cut-offs (default: 1 5 10 100)")
    b.add_argument("--task", default=None,
                   help="task whose instructions the queries and documents get (default: doc for a corpus with "
                        "images, t2t for text; see `mmsearch tasks`)")
    b.add_argument("--instruction", default=None, help="the query instruction verbatim (overrides --task's)")
    b.add_argument("--index", default="auto", help="faiss index for the corpus (auto, Flat, HNSW32, ...)")
    _common(b, "beir", work_default="DIR/mmsearch-eval")
    b.set_defaults(handler=run_beir)
    h = esub.add_parser("hybrid", help="vector, lexical and hybrid search on quoted-token and paraphrased queries",
                        description="Index the PDFs of a hybrid document collection (`mmsearch datasets "
                                    "hybrid-docs`) with their text layer as a lexical index, search every query "
                                    "in each mode (vector, lexical, hybrid by RRF and by score fusion) and "
                                    "report R@1 and nDCG@10 per query type.")
    h.add_argument("dir", metavar="DIR", help="the collection folder (pdfs/, queries.jsonl, qrels/)")
    h.add_argument("--task", default="t2i", help="task whose instructions both sides get (default: t2i)")
    h.add_argument("--dpi", type=float, default=56, help="page render resolution (default 56: 112 px pages)")
    _common(h, "hybrid", work_default="DIR/mmsearch-eval")
    h.set_defaults(handler=run_hybrid)
    p.set_defaults(handler=lambda args: (p.print_help(sys.stderr), 2)[1])


def _common(p, name: str, work_default: str = "") -> None:
    p.add_argument("--model", default=None,
                   help="Hugging Face id or local checkpoint directory (default: the built-in mmsearch-tiny)")
    add_family_arg(p, dim=True)
    work_default = work_default or f"./{name}-eval"
    p.add_argument("--work", default=None, help=f"working/output folder (default: {work_default})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--batch-size", type=int, default=None, help="inputs per forward pass")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _header(enc, **extra) -> dict:
    from ..eval.report import model_info

    return dict(model_info(enc), date=time.strftime("%Y-%m-%d %H:%M:%S"), **extra)


def run_mbeir(args) -> int:
    from .. import load_encoder
    from ..eval.mbeir import MBeirSettings, run_mbeir
    from ..eval.report import mbeir_report

    work = Path(args.work or "mbeir-eval")
    if not Path(args.root).is_dir():
        from ..errors import InputError

        raise InputError(f"M-BEIR root {args.root} is not a folder; expected query/, cand_pool/, qrels/ and "
                         f"instructions/ under it")
    pools = ("local", "global") if args.pool == "both" else (args.pool,)
    build, enc_options = compact_options(args), encoder_options(args)
    if args.keep_full and args.dim:  # the index truncates (and keeps the full vectors to rescore with)
        build["dim"] = enc_options.pop("dim")
    s = MBeirSettings(root=Path(args.root), work=work, split=args.split, pairs=args.pairs, pools=pools,
                      prompt=args.prompt, seed=args.seed, batch_size=args.batch_size, index=args.index,
                      fresh=args.fresh, show_progress=not args.no_progress, build_options=build)
    start = time.perf_counter()
    enc = load_encoder(args.model, device=args.device, dtype=args.dtype, **enc_options)
    results = run_mbeir(s, enc)
    header = _header(enc, root=args.root, split=args.split, prompt=args.prompt, index=args.index,
                     compact=build if build["precision"] or build["keep_full"] else None,
                     elapsed_seconds=round(time.perf_counter() - start, 1))
    paths = mbeir_report(work, results, header)
    return _finish(args, paths, any(r.error for r in results), plural(len(results), "pair run", "pair runs"),
                   header["elapsed_seconds"])


def run_mmeb(args) -> int:
    from .. import load_encoder
    from ..eval.mmeb import evaluate_dataset, find_datasets, summarize, task_table
    from ..eval.report import mmeb_report

    root = Path(args.root)
    work = Path(args.work or "mmeb-eval")
    start = time.perf_counter()
    tables = find_datasets(root, args.datasets)  # a wrong root fails before the model loads
    enc = load_encoder(args.model, device=args.device, dtype=args.dtype, **encoder_options(args))
    image_root = Path(args.image_root) if args.image_root else root / "images"
    results = [evaluate_dataset(enc, name, table, image_root, args.batch_size, not args.no_progress)
               for name, table in tables.items()]
    summary = summarize(results, task_table(root))
    header = _header(enc, root=args.root, elapsed_seconds=round(time.perf_counter() - start, 1))
    paths = mmeb_report(work, results, summary, header)
    return _finish(args, paths, False, plural(len(results), "dataset"), header["elapsed_seconds"])


def run_beir(args) -> int:
    from .. import load_encoder
    from ..eval.beir import BeirSettings, beir_report, run_beir
    from ..eval.beir_data import read_collection

    root = Path(args.dir)
    work = Path(args.work) if args.work else root / "mmsearch-eval"
    s = BeirSettings(root=root, work=work, split=args.split, recall_at=tuple(args.k), task=args.task,
                     instruction=args.instruction, index=args.index, batch_size=args.batch_size,
                     show_progress=not args.no_progress)
    start = time.perf_counter()
    coll = read_collection(root, args.split)  # a wrong folder or a bad file fails before the model loads
    enc = load_encoder(args.model, device=args.device, dtype=args.dtype, **encoder_options(args))
    result = run_beir(s, enc, coll)
    header = _header(enc, root=args.dir, split=args.split, task=result.task, index=args.index,
                     elapsed_seconds=round(time.perf_counter() - start, 1))
    paths = beir_report(work, result, header)
    return _finish(args, paths, False, plural(result.scored, "query", "queries"), header["elapsed_seconds"])


def run_hybrid(args) -> int:
    from .. import load_encoder
    from ..eval.hybrid import HybridEvalSettings, hybrid_report, read_queries, run_hybrid_eval

    root = Path(args.dir)
    work = Path(args.work) if args.work else root / "mmsearch-eval"
    s = HybridEvalSettings(root=root, work=work, task=args.task, dpi=args.dpi)
    start = time.perf_counter()
    queries = read_queries(root)  # a wrong folder fails before the model loads
    enc = load_encoder(args.model, device=args.device, dtype=args.dtype, **encoder_options(args))
    result = run_hybrid_eval(s, enc)
    header = _header(enc, root=args.dir, task=args.task, dpi=args.dpi,
                     elapsed_seconds=round(time.perf_counter() - start, 1))
    paths = hybrid_report(work, result, header)
    return _finish(args, paths, False, plural(len(queries), "query", "queries"), header["elapsed_seconds"])


def _finish(args, paths: dict, had_errors: bool, done: str, seconds: float) -> int:
    if args.json:
        print_json(__import__("json").loads(Path(paths["json"]).read_text()))
    else:
        sys.stdout.write(Path(paths["markdown"]).read_text())
    if had_errors:
        print("some pairs failed; see the error column", file=sys.stderr)
    if not args.json:
        chart = paths["chart"] or "(no chart: pip install matplotlib)"
        print(f"\nevaluated {done} in {seconds:.1f} s; report: {paths['markdown']} {paths['json']} {chart}",
              file=sys.stderr)
    return 1 if had_errors else 0
