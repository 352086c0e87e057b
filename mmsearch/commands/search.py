"""`mmsearch search`: query an index with text, an image, or both (a composed query)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import InputError
from ..index_format import MANIFEST_FILE
from ._common import UsageError, int_range, plural, print_json, print_table
from .search_modes import add_mode_arguments, mode_options

EXAMPLES = """examples:
  mmsearch search out/index --text "a red bus" -k 5
  mmsearch search out/index --image ref.jpg --text "the same, but at night" --task CIRR
  mmsearch search out/index --text "a dog" --filter '{"modality": "image", "year": {"gte": 2000}}'
  mmsearch search out/index --text "a dog" --rerank refine,hubness --nprobe 64 --json
  mmsearch search out/index --queries queries.jsonl --out hits.jsonl
  mmsearch search out/index --queries queries.jsonl --format trec --run-name tiny --out run.trec
  mmsearch search out/index --text "a dog" -v        # where the time goes, on stderr
  mmsearch search out/index --text "KV-4821" --mode hybrid               # BM25 + vectors, RRF
  mmsearch search out/index --text "KV-4821" --mode hybrid --alpha 0.3   # weighted score fusion

--queries FILE: one JSON object per line with any of text, image (a path relative to FILE),
task, instruction, filter (as --filter) and id (default: the line number); --task,
--instruction and --filter apply to the rows that don't set their own.
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "search", help="search an index with text, an image or both",
        description="Embed the query with the index's model (its query instruction chosen by --task or "
                    "given by --instruction), search every shard, filter, optionally rerank, and print "
                    "the hits as a table or JSON.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help=f"index directory (holding {MANIFEST_FILE})")
    p.add_argument("--text", default=None, help="query text")
    p.add_argument("--image", default=None, help="query image file (with --text: a composed query)")
    p.add_argument("--like", default=None, metavar="ID",
                   help="more like this: the item's image (else its text) is the query; the item itself is left out")
    p.add_argument("--queries", default=None, metavar="FILE",
                   help="JSONL of queries ({text, image, task, instruction, filter, id}), searched in batches")
    p.add_argument("--format", choices=("table", "jsonl", "trec"), default=None,
                   help="output: table (one query's default), jsonl (one line of hits per query, --queries' "
                        "default) or trec (a TREC run: qid Q0 docid rank score run)")
    p.add_argument("--run-name", default="mmsearch", help="the run column of --format trec (default: mmsearch)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the hits here instead of stdout")
    p.add_argument("--batch-size", type=int_range(1), default=32, help="--queries searched per batch (default 32)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--task", default=None, help="task name selecting the query instruction (see `mmsearch tasks`)")
    g.add_argument("--instruction", default=None, help="query instruction, verbatim")
    p.add_argument("-k", type=int_range(1), default=10, help="number of hits (default 10)")
    p.add_argument("--filter", default=None, metavar="JSON",
                   help='metadata filter, e.g. \'{"modality": "image", "year": {"gte": 2000}}\'')
    p.add_argument("--rerank", default=None, help="comma-separated rerankers: refine, hubness, vlm")
    p.add_argument("--nprobe", type=int_range(1), default=None, help="IVF lists to visit")
    p.add_argument("--ef-search", type=int_range(1), default=None, help="HNSW beam width")
    p.add_argument("--k-factor", type=float, default=None, help="refine stage: candidates per hit")
    p.add_argument("--oversample", type=float, default=None, help="compact codes: candidates per hit to rescore")
    p.add_argument("--no-rescore", dest="rescore", action="store_const", const=False, default=None,
                   help="compact codes: keep the first stage's order")
    p.add_argument("--candidates", type=int_range(1), default=None,
                   help="multi-vector index: FDE candidates reranked by exact MaxSim (default: the index's, 200)")
    p.add_argument("--model", default=None,
                   help="load the encoder from here instead of the manifest's model id (same weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--runtime", choices=("numpy", "torch"), default="numpy",
                   help="numpy (default): text queries of Qwen-family models run without loading torch, a "
                        "second faster on a one-off search; images, other models and GPUs use torch")
    p.add_argument("--json", action="store_true", help="print the hits as JSON on stdout")
    add_mode_arguments(p)
    p.set_defaults(handler=run, exit_fast=True)  # read-only: the process may end without module teardown


class _Timer:
    """Where a search's time goes (-v prints it): imports, model load, encode, search."""

    def __init__(self, started=None):
        import time

        self.clock, self.parts, self.start = time.perf_counter, {}, started or time.perf_counter()
        if started is not None:
            self.parts["cli start"] = time.perf_counter() - started

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def timed(self, name: str, fn):
        def wrapper(*a, **kw):
            t = self.clock()
            try:
                return fn(*a, **kw)
            finally:
                self.add(name, self.clock() - t)
        return wrapper

    def line(self) -> str:
        total = self.clock() - self.start
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.parts.items())
        return f"time: {parts}; total {total:.2f} s (plus Python's own start-up)"


def _filter(text):
    if text is None:
        return None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--filter is not valid JSON ({e}): {text!r}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"--filter {text}: expected a JSON object such as "
                         f"'{{\"modality\": \"image\", \"year\": {{\"gte\": 2000}}}}'")
    return spec


def run(args) -> int:
    import sys
    import time

    timer = _Timer(getattr(args, "_started", None))
    if args.queries and (args.text or args.image or args.like):
        raise UsageError("--queries searches a file of queries: leave out --text, --image and --like")
    if args.like is not None and args.image:
        raise UsageError("--like ID uses the item's image as the query: leave out --image")
    if not args.queries and not args.text and not args.image and args.like is None:
        raise UsageError("nothing to search for: give --text, --image or both, --like ID, or --queries FILE")
    if args.format == "trec" and args.json:
        raise UsageError("--json and --format trec: choose one")
    fmt = args.format or ("jsonl" if args.queries or args.out else "table")
    if fmt == "table" and (args.queries or args.out):
        raise UsageError("--format table prints one query's hits on the terminal; use jsonl or trec with "
                         "--queries or --out")
    rows = _read_queries(args.queries) if args.queries else [
        {"id": "1", "text": args.text, "image": args.image, **({"like": args.like} if args.like else {})}]
    filt = _filter(args.filter)
    args.search_mode = mode_options(args)
    t = time.perf_counter()
    from ..query import open_index
    from ..query.rerank import parse_rerank

    timer.add("imports", time.perf_counter() - t)
    try:
        parse_rerank(args.rerank)  # a wrong name is a wrong invocation (exit 2), found before the model loads
    except InputError as e:
        raise UsageError(f"--rerank {args.rerank}: {e}") from None
    params = {"nprobe": args.nprobe, "efSearch": args.ef_search, "k_factor": args.k_factor,
              "oversample": args.oversample, "rescore": args.rescore, "candidates": args.candidates}
    params = {k: v for k, v in params.items() if v is not None}
    runtime = "torch" if rows_need_torch(rows) else args.runtime
    with open_index(args.index, encoder=args.model, device=args.device, runtime=runtime) as index:
        if runtime == "torch":
            timer.add("imports", _import_stack())
        if args.mode != "lexical" or args.rerank:  # lexical search alone needs no model
            t = time.perf_counter()
            encoder = index.encoder
            timer.add("model load", time.perf_counter() - t)
            encoder.encode = timer.timed("encode", encoder.encode)
        t = time.perf_counter()
        results = _search_all(index, rows, args, filt, params)
        timer.add("search", time.perf_counter() - t - timer.parts.get("encode", 0.0))
    if fmt != "table":
        where = _write(results, fmt, args)
        print(f"searched {plural(len(results), 'query', 'queries')} in {args.index}: "
              f"{sum(len(h) for _, h in results)} hits -> {where} ({fmt}) in {timer.clock() - timer.start:.1f} s",
              file=sys.stderr)
    elif args.json:
        (row, hits), = results
        print_json({"index": args.index, "query": {"text": args.text, "image": args.image, "task": args.task,
                                                   "instruction": args.instruction, "like": args.like},
                    "hits": [h.to_dict() for h in hits]})
    else:
        (row, hits), = results
        table = [(h.rank, f"{h.score:.4f}", h.id, h.text, h.image) for h in hits]
        print_table(("rank", "score", "id", "text", "image"), table, (4, 9, 24, 48, 40))
        if not hits:
            print("(no hits)")
        print(f"{plural(len(hits), 'hit')} from {args.index} in {timer.clock() - timer.start:.1f} s",
              file=sys.stderr)
    if getattr(args, "verbose", 0):
        print(f"encoder: {index.runtime_note}", file=sys.stderr)
        print(timer.line(), file=sys.stderr)
    return 0


def rows_need_torch(rows) -> bool:
    """An image (or `like`, which may be one) needs the torch encoder: import it up front."""
    return any(r.get("image") or r.get("like") is not None for r in rows)


def _import_stack() -> float:
    """Import the model stack up front so -v can tell imports from loading the weights."""
    import importlib
    import time

    t = time.perf_counter()
    for name in ("faiss", "torch", "transformers", "transformers.modeling_utils"):
        try:
            importlib.import_module(name)
        except ImportError:  # a model that needs neither: nothing to time
            break
    return time.perf_counter() - t


QUERY_FIELDS = ("id", "text", "image", "task", "instruction", "filter")


def _read_queries(path: str) -> list:
    """The rows of a --queries file, checked: each line a JSON object of QUERY_FIELDS with text and/or image."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"--queries {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"--queries {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--queries {path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object like {{\"text\": \"a red bus\"}}, "
                             f"got {type(row).__name__}")
        unknown = sorted(set(row) - set(QUERY_FIELDS))
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(QUERY_FIELDS)}")
        if not row.get("text") and not row.get("image"):
            raise InputError(f"{where}: nothing to search for: give text, image or both")
        if row.get("task") is not None and row.get("instruction") is not None:
            raise InputError(f"{where}: give task or instruction, not both")
        qid = str(row.get("id", n))
        if qid in seen:
            raise InputError(f"{where}: duplicate query id {qid!r}")
        seen.add(qid)
        image = row.get("image")
        if image is not None:
            image = Path(image) if Path(image).is_absolute() else file.parent / image
        rows.append({**row, "id": qid, "image": image})
    if not rows:
        raise InputError(f"--queries {path}: no queries in the file")
    return rows


def _search_all(index, rows, args, filt, params) -> list:
    """[(row, hits)] in file order; rows grouped by filter (one per search call), batched."""
    groups = {}
    for i, row in enumerate(rows):
        f = row["filter"] if "filter" in row else filt
        groups.setdefault(json.dumps(f, sort_keys=True), (f, []))[1].append(i)
    out = [None] * len(rows)
    for f, members in groups.values():
        for start in range(0, len(members), max(args.batch_size, 1)):
            batch = members[start:start + args.batch_size]
            queries = [_query(rows[i], args, index) for i in batch]
            extra = 1 if any("like" in rows[i] for i in batch) else 0  # room for the item itself
            hits = index.search(queries, k=args.k + extra, filter=f, rerank=args.rerank, params=params,
                                **args.search_mode)
            for i, h in zip(batch, hits):
                if "like" in rows[i]:
                    h = [dataclasses.replace(x, rank=r) for r, x in
                         enumerate((x for x in h if x.id != rows[i]["like"]), 1)]
                out[i] = (rows[i], h[:args.k])
    return out


def _query(row, args, index):
    from ..types import Query

    if "like" in row:
        return _like(row, index)
    image = Path(row["image"]) if row.get("image") is not None else None
    instruction, task = row.get("instruction"), row.get("task")
    if instruction is None and task is None:
        instruction, task = args.instruction, args.task
    return Query(text=row.get("text") or None, image=image, instruction=instruction, task=task)


def _like(row, index):
    """The query of `--like ID`: the item's image (with --text: composed), else its text."""
    from ..errors import InputError
    from ..types import Query

    item_id = row["like"]
    record = index.get([item_id])[0]
    if record is None:
        raise InputError(f"--like {item_id!r}: no item with this id in the index (`mmsearch index ids` lists them)")
    picture = index.candidate_image(record)
    if picture is not None:
        return Query(text=row.get("text") or None, image=picture)
    if row.get("text"):
        raise InputError(f"--like {item_id!r}: the item has no image to combine with --text")
    if not record.get("text"):
        raise InputError(f"--like {item_id!r}: the item has neither an image nor text")
    return Query(text=record["text"])


def _write(results, fmt, args) -> str:
    import sys

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for row, hits in results:
            if fmt == "trec":
                out.writelines(f"{row['id']} Q0 {h.id} {h.rank} {h.score:.6f} {args.run_name}\n" for h in hits)
            else:
                query = {k: (str(v) if k == "image" and v is not None else v) for k, v in row.items()}
                out.write(json.dumps({"qid": row["id"], "query": query, "hits": [_hit(h) for h in hits]},
                                     ensure_ascii=False, default=str) + "\n")
    finally:
        if args.out:
            out.close()
    return args.out or "stdout"


def _hit(h) -> dict:
    d = h.to_dict()
    return {"rank": d["rank"], "id": d["id"], "score": round(float(d["score"]), 6), "metadata": d["metadata"]}
