"""`mmsearch datasets make synthetic`: write a synthetic collection with known ground truth."""
from __future__ import annotations

import sys

from ._common import plural, print_json

FORMAT_HELP = ("mbeir: M-BEIR (UniIR) query/cand_pool/qrels/instructions; mmeb: MMEB-eval tables, each query "
               "with its own candidates, positive first; train: MMEB-train pairs with hard negatives")


def _csv(text: str):
    return tuple(t.strip() for t in text.split(",") if t.strip())


def register(sub) -> None:
    p = sub.add_parser("datasets", help="make evaluation and training collections",
                       description="Make collections for experiments: `mmsearch datasets make synthetic`.")
    p.set_defaults(handler=lambda args: _usage(p))
    kinds = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    make = kinds.add_parser("make", help="generate a collection", description="Generate a collection.")
    make.set_defaults(handler=lambda args: _usage(make))
    sources = make.add_subparsers(dest="collection", metavar="KIND")
    s = sources.add_parser(
        "synthetic", help="rendered shapes, edits, questions and pages with known ground truth",
        description="Render a deterministic synthetic collection (scenes of shapes with captions, composed edits, "
                    "VQA pairs, document pages) in the M-BEIR, MMEB or MMEB-train layout. The same options "
                    "give byte-identical files.")
    s.add_argument("--out", required=True, help="output directory (the collection root); must be empty")
    s.add_argument("--format", choices=("mbeir", "mmeb", "train"), default="mbeir", help=FORMAT_HELP)
    s.add_argument("--size", type=int, default=100, help="queries per task and split")
    for split in ("train", "val", "test"):
        s.add_argument(f"--{split}-size", type=int, default=None, help=f"queries per task in the {split} split")
    s.add_argument("--splits", type=_csv, default=None,
                   help="splits to write, comma-separated; unset: mbeir writes train,val,test, mmeb test, "
                        "train train")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--image-size", type=int, default=112, help="scene image side in pixels")
    s.add_argument("--tasks", type=_csv, default="t2i,i2t,composed,vqa,doc", help="tasks, comma-separated")
    s.add_argument("--holdout", default=None, metavar="FRACTION|PAIRS",
                   help="colour-shape pairs shown only in the --holdout-splits, where every scene has one: a "
                        "fraction of all pairs (0.2) or a list (red:circle,blue:square)")
    s.add_argument("--holdout-seed", type=int, default=0, help="seed choosing the held-out pairs from a fraction")
    s.add_argument("--holdout-splits", type=_csv, default="test", help="splits made of held-out pairs")
    s.add_argument("--shapes", type=_csv, default=None,
                   help="shapes to draw, from circle,square,triangle,star,cross,diamond; unset: all but diamond")
    s.add_argument("--colours", type=_csv, default=None,
                   help="colours to draw, from red,orange,yellow,green,cyan,blue,purple,pink,brown,black; "
                        "unset: all but brown and black")
    s.add_argument("--doc-style", choices=("page", "word"), default="page",
                   help="document pages: title and sentences, or one large word (a reading curriculum)")
    s.add_argument("--page-size", type=int, default=None, help="page side in pixels; unset: --image-size")
    s.add_argument("--font-size", type=int, default=None, help="page body font size; unset: page size / 11")
    s.add_argument("--doc-candidate", choices=("page", "image"), default="page",
                   help="MMEB / MMEB-train: page candidates carry VLM2Vec's document instruction (page) or the "
                        "generic image one (image), as an index of screenshots or an M-BEIR pool encodes them "
                        "(default: %(default)s)")
    s.add_argument("--doc-titles", action="store_true",
                   help="--format train: also write SynthDocTitles/<split>, each page question with the page's "
                        "title as text (a reading curriculum's first stage)")
    s.add_argument("--candidates", type=int, default=1000, help="MMEB: candidates per query, positive included")
    s.add_argument("--table", choices=("parquet", "jsonl"), default="parquet", help="MMEB / MMEB-train table format")
    _output_options(s)
    s.set_defaults(handler=run_synthetic)
    v = sources.add_parser(
        "vidore", help="ViDoRe-like pages of four regions and questions about one region (BEIR layout)",
        description="Render pages with a title, a paragraph, a table and a figure, each about its own made-up "
                    "word, and questions that each ask about one region of one page; written as corpus.jsonl "
                    "(or .parquet), queries.jsonl and qrels/test.tsv for `mmsearch eval beir`. Deterministic.")
    v.add_argument("--out", required=True, help="output directory; must be empty")
    v.add_argument("--pages", type=int, default=200, help="pages in the corpus (default: %(default)s)")
    v.add_argument("--queries", type=int, default=400, help="questions, at most 4 per page (default: %(default)s)")
    v.add_argument("--seed", type=int, default=0, help="random seed")
    v.add_argument("--page-size", type=int, default=448, help="page side in pixels (default: %(default)s)")
    v.add_argument("--corpus", choices=("jsonl", "parquet"), default="jsonl",
                   help="corpus.jsonl with image paths, or corpus.parquet with image bytes (ViDoRe v2 style)")
    _output_options(v)
    v.set_defaults(handler=run_vidore)
    h = sources.add_parser(
        "hybrid-docs", help="PDF pages with a figure and a text layer; quoted-token and paraphrased queries",
        description="Write PDFs whose pages each hold a figure and one line of print naming rare tokens (a "
                    "record id, a part code, a name), with queries that quote one token and queries that "
                    "describe the figure; for `mmsearch eval hybrid`. Deterministic.")
    h.add_argument("--out", required=True, help="output directory; must be empty")
    h.add_argument("--pages", type=int, default=200, help="pages in the corpus (default: %(default)s)")
    h.add_argument("--pages-per-pdf", type=int, default=50, help="pages per PDF file (default: %(default)s)")
    h.add_argument("--seed", type=int, default=0, help="random seed")
    _output_options(h, progress=False)
    h.set_defaults(handler=run_hybrid_docs)


def _output_options(p, progress: bool = True) -> None:
    """What every collection generator takes about its output."""
    p.add_argument("--overwrite", action="store_true", help="replace a collection already in --out")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _options(args):
    from ..datasets.synthetic import DocOptions, SceneOptions, SyntheticOptions
    from ..datasets.options import holdout_from

    scene = {}
    if args.shapes:
        scene["shapes"] = args.shapes
    if args.colours:
        scene["colours"] = args.colours
    sizes = {split: getattr(args, f"{split}_size") for split in ("train", "val", "test")}
    return SyntheticOptions(
        format=args.format, size=args.size, split_sizes={k: v for k, v in sizes.items() if v is not None},
        seed=args.seed, image_size=args.image_size, tasks=args.tasks, splits=args.splits,
        holdout=holdout_from(args.holdout, seed=args.holdout_seed, splits=args.holdout_splits),
        scene=SceneOptions(**scene), doc=DocOptions(style=args.doc_style, page_size=args.page_size,
                                                    font_size=args.font_size, candidate=args.doc_candidate),
        num_candidates=args.candidates, table=args.table, doc_titles=args.doc_titles, overwrite=args.overwrite)


def run_synthetic(args) -> int:
    from tqdm.auto import tqdm

    from ..datasets.synthetic import make

    options = _options(args)
    bars = []  # one bar per batch of images, made on the first report (no bar if make() fails early)

    def progress(done: int, total: int) -> None:
        if not bars or bars[-1].total != total or done < bars[-1].n:
            bars.append(tqdm(total=total, unit="img", desc="render", disable=args.no_progress, dynamic_ncols=True))
        bars[-1].update(done - bars[-1].n)

    try:
        summary = make(args.out, options, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        print_json(summary)
        return 0
    splits = ", ".join(f"{s} {n}" for s, n in summary["splits"].items())
    if summary["held_out_pairs"]:
        held = ", ".join(" ".join(p) for p in summary["held_out_pairs"])
        print(f"held-out pairs (only in {', '.join(summary['held_out_splits'])}): {held}", file=sys.stderr)
    print(f"wrote a {summary['format']} collection to {summary['root']}: tasks {', '.join(summary['tasks'])}; "
          f"queries per task: {splits}; {plural(summary['images'], 'image')}, {plural(summary['files'], 'file')} "
          f"in {summary['seconds']:.1f} s", file=sys.stderr)
    return 0


def run_vidore(args) -> int:
    from tqdm.auto import tqdm

    from ..datasets.vidore import VidoreOptions, make_vidore

    options = VidoreOptions(pages=args.pages, queries=args.queries, seed=args.seed, page_size=args.page_size,
                            corpus=args.corpus, overwrite=args.overwrite)
    with tqdm(total=args.pages, unit="page", desc="render", disable=args.no_progress, dynamic_ncols=True) as bar:
        summary = make_vidore(args.out, options, progress=lambda done, total: bar.update(done - bar.n))
    if args.json:
        print_json(summary)
        return 0
    print(f"wrote a ViDoRe-like BEIR collection to {summary['root']}: {plural(summary['pages'], 'page')}, "
          f"{plural(summary['queries'], 'query', 'queries')} in {summary['seconds']:.1f} s", file=sys.stderr)
    return 0


def run_hybrid_docs(args) -> int:
    from ..datasets.hybrid_docs import HybridDocOptions, make_hybrid_docs

    summary = make_hybrid_docs(args.out, HybridDocOptions(pages=args.pages, pages_per_pdf=args.pages_per_pdf,
                                                          seed=args.seed, overwrite=args.overwrite))
    if args.json:
        print_json(summary)
        return 0
    print(f"wrote a hybrid document collection to {summary['root']}: {plural(summary['pages'], 'page')} in "
          f"{plural(summary['pdfs'], 'PDF')}, {plural(summary['queries'], 'query', 'queries')} in "
          f"{summary['seconds']:.1f} s", file=sys.stderr)
    return 0
