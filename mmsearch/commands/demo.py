"""`mmsearch demo`: a small synthetic corpus indexed with the built-in model, searched four ways.

Every query has a known answer (the corpus is generated), so the output marks
where the right item landed: text -> image, image -> caption, composed
(image + "Make the square blue." -> the edited image) and question -> document
page (the page that names the question's made-up word).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ._common import add_family_arg, clip, int_range, plural, print_json

QUERIES_PER_KIND = 3
KINDS = (  # (title, M-BEIR pair file stem, query uses text, query uses image, candidate modality)
    ("text -> image", "mbeir_synthshapes_task0_test", True, False, "image"),
    ("image -> caption", "mbeir_synthshapes_task3_test", False, True, "text"),
    ("composed: image + edit -> image", "mbeir_synthedit_task7_test", True, True, "image"),
    ("question -> document page", "mbeir_synthdocs_task0_test", True, False, "image"),
)
TASKS = ("t2i", "i2t", "composed", "doc")


def register(sub) -> None:
    p = sub.add_parser("demo", help="index a generated corpus and run example searches (offline, < 2 min)",
                       description=__doc__)
    p.add_argument("--out", default="mmsearch-demo", help="folder for the corpus, the index and demo.html")
    p.add_argument("--model", default=None, help="encoder (default: the built-in mmsearch-tiny)")
    add_family_arg(p)
    p.add_argument("--size", type=int_range(1), default=60, help="queries per task in the generated corpus")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated corpus (default: %(default)s)")
    p.add_argument("-k", type=int_range(1), default=5, help="hits shown per query (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=run)


def _corpus(out: Path, size: int, seed: int) -> Path:
    from ..datasets import make

    root = out / "corpus"
    if not all((root / "query" / "test" / f"{kind[1]}.jsonl").is_file() for kind in KINDS):
        make(root, format="mbeir", size=size, seed=seed, tasks=TASKS, splits=("test",), overwrite=True)
    return root


def _prompts(root: Path) -> dict:
    rows = (root / "instructions" / "query_instructions.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return {(c[3], c[0], c[1]): c[4] for c in (r.split("\t") for r in rows)}


def _examples(root: Path, prompts: dict):
    from ..types import Query

    for title, stem, use_text, use_image, cand in KINDS:
        rows = [json.loads(x) for x in (root / "query" / "test" / f"{stem}.jsonl").read_text().splitlines()]
        for row in rows[:QUERIES_PER_KIND]:
            instruction = prompts[(row["qid"].split(":")[0], row["query_modality"], cand)]
            image = str(root / row["query_img_path"]) if use_image else None
            query = Query(text=row["query_txt"] if use_text else None, image=image, instruction=instruction)
            yield title, query, cand, {str(p) for p in row["pos_cand_list"]}


def run(args) -> int:
    from .. import build_index, open_index
    from .demo_page import write_page

    start = time.perf_counter()
    out = Path(args.out)
    root = _corpus(out, args.size, args.seed)
    pool = root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"
    built = build_index([pool], out / "index", model=args.model, family=args.family, source_kind="mbeir",
                        source_options={"root": str(root)}, show_progress=not args.no_progress)
    index = open_index(out / "index")
    results = []
    for title, query, modality, answers in _examples(root, _prompts(root)):
        hits = index.search(query, k=args.k, filter={"modality": modality})
        results.append({"kind": title, "query_text": query.text, "query_image": query.image,
                        "answers": sorted(answers), "found_at": next((h.rank for h in hits if h.id in answers), None),
                        "hits": [{"rank": h.rank, "score": round(h.score, 4), "id": h.id,
                                  "text": h.metadata.get("text") or _caption(h.metadata),
                                  "image": h.metadata.get("image")} for h in hits]})
    page = write_page(out / "demo.html", results, index)
    summary = {"model": index.manifest.model.id, "indexed": built.indexed, "items": len(index),
               "index": str(out / "index"), "seconds": round(time.perf_counter() - start, 1),
               "page": str(page), "results": results}
    print_json(summary) if args.json else _print(summary)
    return 0


def _caption(meta: dict):
    """A scene's caption, or a page's title (its first line)."""
    try:
        facts = json.loads(meta.get("src_content") or "{}")
    except ValueError:
        return None
    return facts.get("caption") or (facts.get("page_text") or "").split("\n")[0] or None


def _print(summary: dict) -> None:
    if summary["indexed"]:
        print(f"mmsearch demo: {plural(summary['indexed'], 'item')} indexed with {summary['model']}\n")
    else:
        print(f"mmsearch demo: index up to date: {plural(summary['items'], 'item')} (0 new), "
              f"model {summary['model']}\n")
    for r in summary["results"]:
        q = " + ".join(x for x in (Path(r["query_image"]).name if r["query_image"] else None,
                                   repr(r["query_text"]) if r["query_text"] else None) if x)
        found = f"right answer at rank {r['found_at']}" if r["found_at"] else "right answer not in the top hits"
        print(f"[{r['kind']}] {q}   ({found})")
        for h in r["hits"]:
            mark = "*" if h["id"] in r["answers"] else " "
            what = clip(h["text"], 60) if h["text"] else Path(h["image"] or "").name
            print(f"  {mark} {h['rank']:>2}  {h['score']:.3f}  {h['id']:<8} {what}")
        print()
    print("(* marks the known right answer)")
    print(f"demo done in {summary['seconds']} s: {plural(summary['items'], 'item')} in {summary['index']}, "
          f"{plural(len(summary['results']), 'query', 'queries')}; results page: {summary['page']}")
