"""`mmsearch eval hybrid DIR`: vector, lexical and hybrid search on the quoted-token /
paraphrased document collection (`datasets.hybrid_docs`), R@1 and nDCG@10 per query type.

The PDFs are indexed by the project's indexer (PDF source: pages rendered, their text
layer stored as ``page_text`` and indexed lexically), then every query is searched
through `Index.search` in each mode. Pages render at `dpi` (56: 112 px, the size the
built-in tiny model was trained on); the tiny model's ``t2i`` task embeds both sides.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from ..errors import InputError
from ..types import Query
from .metrics import ndcg_at, recall_at
from .report import markdown_table, write_report

# (label, Index.search keywords): each arm alone, and both fusions
RUNS = (("vector", {"mode": "vector"}), ("lexical", {"mode": "lexical"}),
        ("hybrid-rrf", {"mode": "hybrid", "fusion": "rrf"}),
        ("hybrid-score", {"mode": "hybrid", "fusion": "score", "alpha": 0.5}))
BATCH = 64


@dataclass(frozen=True)
class HybridEvalSettings:
    root: Path
    work: Path
    task: str = "t2i"
    dpi: float = 56
    k: int = 10
    runs: Sequence = field(default=RUNS)


def read_queries(root: Path) -> List[dict]:
    path = root / "queries.jsonl"
    if not path.is_file():
        raise InputError(f"{root} is not a hybrid document collection (no queries.jsonl); make one with "
                         f"`mmsearch datasets hybrid-docs OUT`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(s: HybridEvalSettings, encoder) -> Path:
    from ..indexer.build import build_index

    pdfs = sorted((s.root / "pdfs").glob("*.pdf"))
    if not pdfs:
        raise InputError(f"{s.root / 'pdfs'}: no PDF to index")
    out = s.work / "index"
    build_index([str(p) for p in pdfs], out, encoder=encoder, task=s.task, text_fields=("page_text",),
                source_options={"dpi": s.dpi}, thumbnails=False, overwrite=True)
    return out


def score_runs(index, queries: List[dict], s: HybridEvalSettings) -> Dict[str, Dict[str, Dict[str, float]]]:
    """label -> query type -> {"R@1", "nDCG@10", "queries"} (means)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for label, kwargs in s.runs:
        per_type: Dict[str, List[tuple]] = {}
        for start in range(0, len(queries), BATCH):
            batch = queries[start:start + BATCH]
            hits = index.search([Query(text=q["text"]) for q in batch], k=s.k, task=s.task, **kwargs)
            for q, row in zip(batch, hits):
                ranked, relevant = [h.id for h in row], {q["corpus-id"]}
                per_type.setdefault(q["type"], []).append((recall_at(ranked, relevant, 1),
                                                           ndcg_at(ranked, relevant, 10)))
        out[label] = {t: {"R@1": sum(r for r, _ in v) / len(v), "nDCG@10": sum(n for _, n in v) / len(v),
                          "queries": len(v)} for t, v in sorted(per_type.items())}
    return out


def run_hybrid_eval(s: HybridEvalSettings, encoder) -> dict:
    from ..query import open_index

    start = time.perf_counter()
    queries = read_queries(s.root)
    with open_index(build(s, encoder), encoder=encoder) as index:
        results = score_runs(index, queries, s)
        pages = len(index)
    return {"collection": str(s.root), "pages": pages, "queries": len(queries), "task": s.task, "dpi": s.dpi,
            "results": results, "seconds": round(time.perf_counter() - start, 2)}


def hybrid_report(out_dir: Path, result: dict, header: dict) -> Dict[str, str]:
    rows = [[label, qtype, round(m["R@1"], 3), round(m["nDCG@10"], 3), m["queries"]]
            for label, types in result["results"].items() for qtype, m in types.items()]
    body = markdown_table(["run", "query type", "R@1", "nDCG@10", "queries"], rows)
    labels = [f"{r[0]} / {r[1]}" for r in rows]
    return write_report(out_dir, "hybrid_report", "Hybrid search: quoted-token and paraphrased queries", header,
                        body, {"result": result}, (labels, [r[2] for r in rows], "R@1 per run and query type",
                                                   "R@1"))
