"""`mmsearch index build|add|delete|compact|verify|info|query-bank`."""
from __future__ import annotations

import sys
from pathlib import Path

from ..index_format import QUERY_BANK_FILE, QUERY_BANK_INFO_FILE, errors_path
from ..indexer.settings import BuildSettings
from ._common import add_compact_args, add_family_arg, compact_options, defaults, encoder_options, plural, print_json

BUILD = defaults(BuildSettings)
# the indexer's source kinds (mmsearch.indexer.sources.KINDS; a test keeps them equal), named here so that
# building the parser imports no source reader
SOURCE_KINDS = ("folder", "jsonl", "csv", "parquet", "mbeir", "pdf", "webdataset")

INDEX_HELP = "index directory"
QUERIES_FILE_HELP = ("a text file with one query per line, JSONL with a \"text\" or \"query\" field (and an "
                     "optional \"image\" path), or a .npy of precomputed embeddings")


def register(sub) -> None:
    p = sub.add_parser("index", help="build and maintain indexes",
                       description="Build, extend, delete from, compact, verify and describe indexes, and write "
                                   "their query banks.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    _build_parser(isub)
    _add_parser(isub)
    d = isub.add_parser("delete", help="delete items (tombstones, honoured by search)")
    d.add_argument("index", help=INDEX_HELP)
    g = d.add_mutually_exclusive_group(required=True)
    g.add_argument("--ids", nargs="+", help="item ids")
    g.add_argument("--ids-file", help="a file with one id per line")
    d.add_argument("--json", action="store_true", help="print the counts as JSON")
    d.set_defaults(handler=run_delete)
    c = isub.add_parser("compact", help="rewrite shards without deleted rows")
    c.add_argument("index", help=INDEX_HELP)
    c.add_argument("--json", action="store_true", help="print the counts as JSON")
    c.set_defaults(handler=run_compact)
    v = isub.add_parser("verify", help="check checksums, row counts and id alignment (exit 1 on a mismatch)")
    v.add_argument("index", help=INDEX_HELP)
    v.add_argument("--json", action="store_true", help="print the problems as JSON")
    v.set_defaults(handler=run_verify)
    i = isub.add_parser("info", help="describe an index: model, faiss, rows, metadata columns, modalities")
    i.add_argument("index", help=INDEX_HELP)
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.set_defaults(handler=run_info)
    ids = isub.add_parser("ids", help="list the ids of the items in an index, one per line (deleted ones left out)")
    ids.add_argument("index", help=INDEX_HELP)
    ids.add_argument("--json", action="store_true", help="print a JSON list instead")
    ids.set_defaults(handler=run_ids)
    e = isub.add_parser("export", help="write the items' ids and metadata (and vectors) to a Parquet file",
                        description="Write one row per live item (deleted ones left out): id, modality, text, "
                                    "image and the metadata columns; with --vectors also the stored float16 "
                                    "vectors as float32, a fixed-size list column `vector`.")
    e.add_argument("index", help=INDEX_HELP)
    e.add_argument("--out", required=True, metavar="FILE.parquet", help="the Parquet file to write")
    e.add_argument("--format", choices=("parquet",), default="parquet", help="output format (default: parquet)")
    e.add_argument("--vectors", action="store_true", help="add the vectors (needs an index built with vectors)")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(handler=run_export)
    _query_bank_parser(isub)
    p.set_defaults(handler=lambda args: (p.print_help(sys.stderr), 2)[1])


def _run_options(p) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image folder, JSONL/CSV/Parquet manifest, M-BEIR pool, PDF or webdataset .tar")
    p.add_argument("--kind", default=None, choices=SOURCE_KINDS, metavar="KIND",
                   help="source kind when the path doesn't tell: " + ", ".join(SOURCE_KINDS))
    p.add_argument("--id-column", default=None, help="manifest column with item ids (default: id)")
    p.add_argument("--text-column", default=None, help="manifest column with text (default: text)")
    p.add_argument("--image-column", default=None, help="manifest column with image paths or bytes (default: image)")
    p.add_argument("--dpi", type=int, default=None, help="PDF page render resolution (default: 144)")
    p.add_argument("--device", default=BUILD["device"], help="auto (GPU with bf16 when present), cpu, cuda")
    p.add_argument("--dtype", default=BUILD["dtype"], help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--batch-size", type=int, default=BUILD["batch_size"], help="inputs per forward pass")
    p.add_argument("--workers", type=int, default=BUILD["workers"],
                   help="decode worker threads; 0 decodes in the encoder thread (default: chosen from the cores)")
    p.add_argument("--max-errors", default=None,
                   help="fail (exit 1) when more items are rejected: a count (100) or a fraction (0.01, 1%%)")
    p.add_argument("--max-image-pixels", type=int, default=BUILD["max_image_pixels"],
                   help="reject images with more pixels (decompression bombs); 0 = no limit")
    p.add_argument("--no-vectors", action="store_true", help="don't keep float16 vectors per shard")
    p.add_argument("--no-thumbnails", action="store_true", help="don't store small previews of the images")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    r = p.add_argument_group("distributed (Ray)", "run the same stages on a Ray cluster; see docs/ray.md")
    r.add_argument("--engine", choices=("local", "ray"), default=BUILD["engine"],
                   help="local: threads in this process; ray: Ray Data tasks and encoder actors")
    r.add_argument("--ray-address", default=None,
                   help="with --engine ray: auto or HOST:PORT of a running cluster; unset: $RAY_ADDRESS, a cluster "
                        "started here with `ray start`, else a new local one")
    r.add_argument("--partition-size", type=int, default=BUILD["partition_size"],
                   help="records per partition (the unit of work, retry and resume; shards never span two)")
    r.add_argument("--ray-actors", type=int, default=None,
                   help="encoder actors; unset: one per GPU, else half the CPUs")


def _build_parser(isub) -> None:
    b = isub.add_parser("build", help="index sources into a new index (rerun to resume)",
                        description="Encode sources and write a sharded FAISS index. Rerunning the same command "
                                    "resumes an interrupted build; a build of other sources or settings into "
                                    "an existing index is refused unless --overwrite.")
    _run_options(b)
    b.add_argument("--out", required=True, help="index directory")
    b.add_argument("--model", default=None,
                   help="Hugging Face id or local checkpoint directory (default: the built-in mmsearch-tiny)")
    add_family_arg(b, dim=True)
    g = b.add_mutually_exclusive_group()
    g.add_argument("--task", default=None, help="use this task's candidate instruction (see `mmsearch tasks`)")
    g.add_argument("--instruction", default=None, help="candidate instruction for every item")
    b.add_argument("--index", default=BUILD["index"], help="auto, or a faiss index_factory string (e.g. HNSW32, "
                                                   "IVF1024,PQ192x4fs,RFlat)")
    b.add_argument("--memory-budget", default=None, help="memory for the index at search time, e.g. 8G (default 4G); "
                        "auto keeps its refine vectors as float32, float16 or 8-bit codes to fit it")
    b.add_argument("--target-recall", type=_recall_target, default=BUILD["recall_target"],
                   help="recall@10 that auto's index choice and search defaults are calibrated to, on held-out "
                        "queries (default: %(default)s)")
    b.add_argument("--shard-size", type=int, default=BUILD["shard_size"], help="rows per shard (default: %(default)s)")
    add_compact_args(b, BUILD)
    b.add_argument("--text-fields", default=None, metavar="COLS",
                   help="columns to index for lexical (BM25) search, e.g. text,caption,title; a PDF page's text "
                        "layer (page_text) joins them. Enables `search --mode lexical|hybrid` (needs tantivy)")
    _multi_vector_options(b)
    b.add_argument("--overwrite", "--fresh", dest="overwrite", action="store_true",
                   help="replace an index already in --out (needed when it was built from other sources or "
                        "settings); without it the same command resumes; --fresh is the older name")
    b.add_argument("--query-bank", default=None, metavar="FILE",
                   help="typical queries for hubness reranking (" + QUERIES_FILE_HELP + "), embedded with --task's "
                        f"query instruction (none with --instruction) and stored as INDEX/{QUERY_BANK_FILE}")
    b.set_defaults(handler=run_build)


def _multi_vector_options(b) -> None:
    from ..index_format import TOKEN_PRECISIONS

    m = b.add_argument_group("multi-vector models (colqwen2, ...)",
                             "each page's token vectors are stored; its MUVERA FDE goes into faiss, and a search "
                             "reranks the FDE's candidates by exact MaxSim")
    m.add_argument("--token-precision", choices=TOKEN_PRECISIONS, default=None,
                   help="token vector storage: float16 (default) or int8 with a per-token scale (half the bytes)")
    m.add_argument("--fde", type=_fde, default={}, metavar="K=V,...",
                   help="MUVERA arguments, e.g. k_sim=5,dim_proj=16,r_reps=20,seed=42 (fastembed's defaults; "
                        "the FDE has r_reps * 2**k_sim * dim_proj dimensions)")
    m.add_argument("--candidates", type=int, default=None,
                   help="FDE candidates a search reranks by MaxSim (default: 200; `search --candidates` overrides)")


def _fde(text: str) -> dict:
    """An argparse `type`: 'k_sim=5,r_reps=20' -> {'k_sim': 5, 'r_reps': 20}."""
    import argparse

    from ..index_format import FDE_DEFAULTS

    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in FDE_DEFAULTS or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{part!r}: expected KEY=INT with KEY one of {sorted(FDE_DEFAULTS)}")
        out[key] = int(value)
    return out


def _recall_target(text: str) -> float:
    """An argparse `type`: a recall in (0, 1]."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a recall in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a recall in (0, 1], got {value}")
    return value


def _add_parser(isub) -> None:
    a = isub.add_parser("add", help="add sources to an existing index (same model and instruction)")
    a.add_argument("index", help=INDEX_HELP)
    _run_options(a)
    a.add_argument("--on-duplicate", choices=("reject", "update"), default="reject",
                   help="an id already in the index: reject the new item, or replace the old one")
    a.set_defaults(handler=run_add)


def _query_bank_parser(isub) -> None:
    q = isub.add_parser("query-bank", help="(re)write the query bank hubness reranking normalises against",
                        description="Embed typical queries with the index's model and a query instruction and "
                                    f"store them as INDEX/{QUERY_BANK_FILE} (with {QUERY_BANK_INFO_FILE} saying how). "
                                    "Searches with rerank=hubness then use it.")
    q.add_argument("index", help=INDEX_HELP)
    q.add_argument("--queries", required=True, metavar="FILE", help=QUERIES_FILE_HELP)
    g = q.add_mutually_exclusive_group()
    g.add_argument("--task", default=None, help="embed with this task's query instruction, as `search --task` does")
    g.add_argument("--instruction", default=None, help="query instruction, verbatim (default: none)")
    q.add_argument("--device", default="auto", help="auto (GPU with bf16 when present), cpu, cuda")
    q.add_argument("--batch-size", type=int, default=None, help="queries per forward pass")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q.add_argument("--json", action="store_true", help="print the bank's description as JSON")
    q.set_defaults(handler=run_query_bank)


def _options(args) -> dict:
    from ..indexer.settings import parse_max_errors

    source_options = {k: v for k, v in (("id_column", args.id_column), ("text_column", args.text_column),
                                        ("image_column", args.image_column), ("dpi", args.dpi)) if v is not None}
    return dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size, workers=args.workers,
                max_errors=parse_max_errors(args.max_errors), store_vectors=not args.no_vectors,
                thumbnails=not args.no_thumbnails, show_progress=not args.no_progress,
                max_image_pixels=args.max_image_pixels or None,
                source_kind=args.kind, source_options=source_options,
                engine=args.engine, ray_address=args.ray_address, partition_size=args.partition_size,
                ray_actors=args.ray_actors)


def _report(result, args) -> int:
    if args.json:
        print_json(result.to_dict())
    else:
        s = result.stats
        print(f"read {result.read} = indexed {result.indexed} + rejected {result.rejected} + skipped "
              f"{result.skipped}; {s.get('items_per_second', 0)} items/s, pipeline efficiency "
              f"{s.get('pipeline_efficiency', 0)}", file=sys.stderr)
        if result.rejected:
            print(f"rejections: {errors_path(result.path)}", file=sys.stderr)
        print(f"index {result.path}: {plural(result.rows, 'row')} in {plural(result.shards, 'shard')} "
              f"({result.indexed} new) in {_seconds(s)}", file=sys.stderr)
    return 0


def _seconds(stats: dict) -> str:
    t = stats.get("wall_seconds", stats.get("seconds"))
    return f"{t:.1f} s" if isinstance(t, (int, float)) else "-"


def _finish(run, args) -> int:
    from ..indexer.build import TooManyRejections

    try:
        return _report(run(), args)
    except TooManyRejections as e:
        _report(e.result, args)
        raise


def run_build(args) -> int:
    from ..indexer.build import build_index
    from ..indexer.settings import parse_size

    opts = _options(args)
    opts.update(encoder_options(args))
    opts.update(task=args.task, instruction=args.instruction, index=args.index,
                memory_budget=parse_size(args.memory_budget), shard_size=args.shard_size, query_bank=args.query_bank,
                recall_target=args.target_recall, text_fields=args.text_fields, **compact_options(args))
    opts.update(token_precision=args.token_precision, fde=args.fde, candidates=args.candidates)
    return _finish(lambda: build_index(args.sources, args.out, model=args.model, overwrite=args.overwrite, **opts), args)


def run_add(args) -> int:
    from ..indexer.build import add_to_index

    return _finish(lambda: add_to_index(args.index, args.sources, on_duplicate=args.on_duplicate,
                                        **_options(args)), args)


def _read_ids(args):
    if args.ids:
        return args.ids
    from ..errors import InputError

    try:
        text = Path(args.ids_file).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"--ids-file {args.ids_file}: {e.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def run_delete(args) -> int:
    from ..indexer.maintenance import delete_ids

    ids = _read_ids(args)
    n = delete_ids(args.index, ids)
    if args.json:
        print_json({"requested": len(ids), "deleted": n})
    else:
        print(f"deleted {n} of {plural(len(ids), 'id')} ({len(ids) - n} already deleted) in {args.index}; "
              f"`mmsearch index compact {args.index}` reclaims the space", file=sys.stderr)
    return 0


def run_compact(args) -> int:
    from ..indexer.maintenance import compact

    result = compact(args.index)
    if args.json:
        print_json(result)
    else:
        print(f"compacted {args.index}: rewrote {plural(result['shards_rewritten'], 'shard')}, removed "
              f"{plural(result['rows_removed'], 'row')}", file=sys.stderr)
    return 0


def run_verify(args) -> int:
    from ..index_format import verify_index

    problems = verify_index(args.index)
    if args.json:
        print_json({"index": args.index, "ok": not problems, "problems": problems})
    else:
        for p in problems:
            print(f"FAIL {p}")
        print(f"OK: {args.index} verified" if not problems else plural(len(problems), "problem"))
    return 1 if problems else 0


def run_info(args) -> int:
    from ..indexer.maintenance import describe

    from ._rows import columns

    d = describe(args.index)
    d.setdefault("columns", columns(args.index))
    d.setdefault("modalities", _modality_counts(args.index))
    if args.json:
        print_json(d)
        return 0
    m = d["model"]
    print(f"index      {d['path']} (format {d['format_version']})")
    family = m.get("family") or "none recorded (built before families)"
    adapter = f", adapter {m['adapter']}" if m.get("adapter") else ""
    print(f"model      {m['id']} ({m['backbone']}, dim {m['dim']}, {m['dtype']}, weights {m.get('weight_hash')})")
    print(f"family     {family}{adapter}")
    print(f"faiss      {d['faiss']['factory']} {dict(d['faiss'].get('search_params') or {})}")
    cal = d["faiss"].get("calibration")
    if cal:
        print(f"calibrated recall@10 {cal['recall_at_10']} (target {cal['target']}, {cal['queries']} held-out "
              f"queries over {cal['rows']} rows)")
    print(f"rows       {d['rows']} in {plural(d['shards'], 'shard')}, {d['deleted']} deleted, {d['live_rows']} live")
    print(f"modalities {', '.join(f'{k} {v}' for k, v in d['modalities'].items()) or '(none)'}")
    print(f"columns    {', '.join(d['columns'])}")
    per_item = ", ".join(f"{k} {v:,.0f}" for k, v in d["bytes_per_item"].items() if k != "total")
    print(f"size       {d['bytes'] / 2**20:.1f} MiB; bytes per item {d['bytes_per_item']['total']:,.0f} ({per_item})")
    c = d.get("compact")
    if c:
        rescoring = (f"{c['oversample']:g} x k candidates rescored from the {c['rescore_from']} copy of the "
                     f"{c['full_dim']}-d vectors" if c["rescore"] else "no rescoring")
        print(f"compact    {c['precision']} codes of {c['dim']} dims; {rescoring}")
    mv = d.get("multi_vector")
    if mv:
        print(f"multi-vec  {mv['token_dim']}-d tokens as {mv['precision']}; MUVERA {mv['fde']}; MaxSim over "
              f"{mv['candidates']} FDE candidates")
    for k, v in d["candidate_instruction"].items():
        print(f"instr      {k}: {v!r}")
    print(f"updated    {d['updated']}")
    return 0


def run_query_bank(args) -> int:
    from ..indexer.query_bank import write_query_bank

    bank = write_query_bank(args.index, args.queries, task=args.task, instruction=args.instruction,
                            device=args.device, batch_size=args.batch_size, show_progress=not args.no_progress)
    if args.json:
        print_json(bank)
    else:
        task = f"task {bank['task']!r}, " if bank["task"] else ""
        print(f"wrote {bank['path']}: {plural(bank['count'], 'query', 'queries')} x {bank['dim']} dims ({task}query instruction "
              f"{bank['instruction']!r})", file=sys.stderr)
    return 0


def _modality_counts(index_dir) -> dict:
    """Live items per modality, in the modality vocabulary (legacy pages counted as pages)."""
    from ..query import modality_counts, open_index

    with open_index(index_dir) as index:  # the encoder loads lazily: not here
        return modality_counts(index)


def run_ids(args) -> int:
    from ._rows import live_tables

    ids = [i for table, _ in live_tables(args.index) for i in table.column("id").to_pylist()]
    if args.json:
        print_json(ids)
    else:
        sys.stdout.writelines(f"{i}\n" for i in ids)
        print(f"{plural(len(ids), 'id')} in {args.index}", file=sys.stderr)
    return 0


def run_export(args) -> int:
    import time

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ._rows import live_tables

    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer, rows, dim = None, 0, None
    try:
        for table, vecs in live_tables(args.index, vectors=args.vectors):
            table = table.replace_schema_metadata(None)  # the shard's own id range means nothing here
            if vecs is not None:
                dim = vecs.shape[1]
                flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1))
                table = table.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, dim))
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
            rows += table.num_rows
        if writer is None:
            from ..index_format import META_COLUMNS

            writer = pq.ParquetWriter(tmp, pa.schema([(c, pa.string()) for c in META_COLUMNS]))
        writer.close()
        writer = None
        tmp.replace(out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    summary = {"index": args.index, "out": str(out), "rows": rows, "vectors": dim,
               "seconds": round(time.perf_counter() - start, 2)}
    if args.json:
        print_json(summary)
    else:
        what = f" with {dim}-d vectors" if dim else ""
        print(f"exported {plural(rows, 'item')}{what} from {args.index} to {out} in {summary['seconds']:.1f} s",
              file=sys.stderr)
    return 0
