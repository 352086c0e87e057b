"""`mmsearch search`: query an index with text, an image, or both (a composed query)."""
from __future__ import annotations

import json
from pathlib import Path

from ..index_format import MANIFEST_FILE
from ._common import print_json, print_table

EXAMPLES = """examples:
  mmsearch search out/index --text "a red bus" -k 5
  mmsearch search out/index --image ref.jpg --text "the same, but at night" --task CIRR
  mmsearch search out/index --text "a dog" --filter '{"modality": "image", "year": {"gte": 2000}}'
  mmsearch search out/index --text "a dog" --rerank refine,hubness --nprobe 64 --json
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
    g = p.add_mutually_exclusive_group()
    g.add_argument("--task", default=None, help="task name selecting the query instruction (see `mmsearch tasks`)")
    g.add_argument("--instruction", default=None, help="query instruction, verbatim")
    p.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--filter", default=None, metavar="JSON",
                   help='metadata filter, e.g. \'{"modality": "image", "year": {"gte": 2000}}\'')
    p.add_argument("--rerank", default=None, help="comma-separated rerankers: refine, hubness, vlm")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists to visit")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW beam width")
    p.add_argument("--k-factor", type=float, default=None, help="refine stage: candidates per hit")
    p.add_argument("--model", default=None,
                   help="load the encoder from here instead of the manifest's model id (same weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the hits as JSON on stdout")
    p.set_defaults(handler=run)


def _filter(text):
    from ..errors import InputError

    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--filter is not valid JSON ({e}): {text!r}") from None


def run(args) -> int:
    from ..errors import InputError
    from ..query import open_index
    from ..types import Query

    if not args.text and not args.image:
        raise InputError("nothing to search for: give --text, --image or both")
    params = {"nprobe": args.nprobe, "efSearch": args.ef_search, "k_factor": args.k_factor}
    query = Query(text=args.text or None, image=Path(args.image) if args.image else None)
    with open_index(args.index, encoder=args.model, device=args.device) as index:
        hits = index.search(query, k=args.k, task=args.task, instruction=args.instruction,
                            filter=_filter(args.filter), rerank=args.rerank,
                            params={k: v for k, v in params.items() if v is not None})
    if args.json:
        print_json({"index": args.index, "query": {"text": args.text, "image": args.image, "task": args.task,
                                                   "instruction": args.instruction},
                    "hits": [h.to_dict() for h in hits]})
        return 0
    rows = [(h.rank, f"{h.score:.4f}", h.id, h.text, h.image) for h in hits]
    print_table(("rank", "score", "id", "text", "image"), rows, (4, 9, 24, 48, 40))
    if not hits:
        print("(no hits)")
    return 0
