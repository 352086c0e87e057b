"""`mmsearch eval beir DIR`: retrieval over a BEIR-format collection (text or page images).

The corpus is written once into WORK as an indexer manifest (id, text = title + text,
image), indexed with the project's indexer (a rerun resumes; the folder is keyed by the
model's weights, the task, the instruction and the faiss index), and every judged
query is searched through the ordinary `open_index(...).search` API, so any encoder the
index holds (one vector or, later, many per item) is evaluated the same way.

Metrics (trec_eval's, as BEIR reports them, from `metrics`): nDCG@5, nDCG@10 with
graded gains (a qrels score is the gain), recall@k = the fraction of a query's relevant
documents in its top k, and MRR@10. Convention: a judged query whose scores are all
<= 0 has no relevant document; it is left out of the means (pytrec_eval would score it
0) and counted in `no_relevant`.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from ..errors import InputError
from ..index_format import atomic_write_bytes, errors_path
from ..types import Query
from .beir_data import Collection, read_collection
from .metrics import mrr_at, ndcg_at, recall_at, write_trec_run
from .report import markdown_table, write_report

NDCG_AT = (5, 10)
QUERY_BATCH = 64


@dataclass(frozen=True)
class BeirSettings:
    root: Path
    work: Path
    split: str = "test"
    recall_at: Sequence[int] = (1, 5, 10, 100)
    task: Optional[str] = None          # None: "doc" for a corpus with images, "t2t" for text
    instruction: Optional[str] = None   # the query instruction verbatim (overrides the task's)
    index: str = "auto"
    batch_size: Optional[int] = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        if not self.recall_at or any(not isinstance(k, int) or k < 1 for k in self.recall_at):
            raise InputError(f"recall@k cut-offs (--k) must be positive integers, got {list(self.recall_at)}")


@dataclass
class BeirResult:
    name: str
    split: str
    metrics: Dict[str, float]
    queries: int
    scored: int
    no_relevant: int
    corpus_size: int
    rejected: int                   # documents the indexer could not read (listed in the index's errors.jsonl)
    task: str
    index: str
    run_file: str
    seconds: float
    per_query: Dict[str, Dict[str, float]] = field(default_factory=dict)


def beir_metrics(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]],
                 recall_ks: Sequence[int] = (1, 5, 10), ndcg_ks: Sequence[int] = NDCG_AT) -> tuple:
    """(mean metrics, per-query metrics) over the queries with a relevant document."""
    per_query = {}
    for qid, gains in qrels.items():
        if gains:
            ranked = run.get(qid, ())
            m = {f"ndcg@{k}": ndcg_at(ranked, gains, k) for k in ndcg_ks}
            m.update({f"recall@{k}": recall_at(ranked, gains, k) for k in recall_ks})
            m["mrr@10"] = mrr_at(ranked, gains, 10)
            per_query[qid] = m
    keys = next(iter(per_query.values()), {})
    means = {k: sum(m[k] for m in per_query.values()) / len(per_query) for k in keys}
    return means, per_query


def corpus_manifest(coll: Collection, work: Path) -> tuple:
    """(WORK/corpus.parquet, its sha1): the corpus as the indexer reads it; rewritten only
    when it changes, since the index's job record fingerprints it (a rewrite is a new job)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("image", image)])
    rows = [{"id": d.id, "text": d.text,
             "image": None if d.image is None else ({"bytes": d.image, "path": None} if isinstance(d.image, bytes)
                                                    else {"bytes": None, "path": str(Path(d.image).resolve())})}
            for d in coll.corpus if d.text is not None or d.image is not None]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    path = work / "corpus.parquet"
    if not path.is_file() or path.read_bytes() != buf.getvalue():
        atomic_write_bytes(path, buf.getvalue())
    return path, hashlib.sha1(buf.getvalue()).hexdigest()


def _index_dir(s: BeirSettings, encoder, task: str, corpus_sha1: str) -> Path:
    """One index per (model weights, task, faiss index, corpus content): a changed corpus or
    model gets a fresh index instead of a refused build."""
    model = [getattr(encoder, "name", ""), getattr(encoder, "fingerprint", "")]
    key = json.dumps(model + [task, s.index, corpus_sha1])
    return s.work / "indexes" / hashlib.sha1(key.encode()).hexdigest()[:12]


def _build(coll: Collection, s: BeirSettings, encoder, task: str):
    from ..indexer.build import build_index
    from ..query import open_index

    s.work.mkdir(parents=True, exist_ok=True)
    manifest, digest = corpus_manifest(coll, s.work)
    out = _index_dir(s, encoder, task, digest)
    r = build_index([manifest], out, encoder=encoder, task=task, index=s.index,
                    batch_size=s.batch_size, thumbnails=False, show_progress=s.show_progress)
    if r.rows == 0:
        raise InputError(f"no document of {coll.corpus_files[0]} could be indexed; see {errors_path(out)}")
    return open_index(out, encoder=encoder), len(coll.corpus) - r.rows


def search_all(index, queries: Mapping[str, str], k: int, task: str, instruction: Optional[str],
               show_progress: bool = False) -> tuple:
    """(run, scores): each query's ranked document ids and scores, through `index.search`."""
    from tqdm.auto import tqdm

    qids = list(queries)
    run, scores = {}, {}
    with tqdm(total=len(qids), unit="query", desc="search", disable=not show_progress) as bar:
        for start in range(0, len(qids), QUERY_BATCH):
            batch = qids[start:start + QUERY_BATCH]
            hits = index.search([Query(text=queries[q]) for q in batch], k=k, task=task, instruction=instruction)
            for qid, row in zip(batch, hits):
                run[qid] = [h.id for h in row]
                scores[qid] = [float(h.score) for h in row]
            bar.update(len(batch))
    return run, scores


def run_beir(s: BeirSettings, encoder, collection: Optional[Collection] = None) -> BeirResult:
    """Index, search and score; `collection`: the collection already read from s.root."""
    start = time.perf_counter()
    coll = collection or read_collection(s.root, s.split)
    task = s.task or ("doc" if coll.has_images else "t2t")
    index, rejected = _build(coll, s, encoder, task)
    k = max(max(s.recall_at), max(NDCG_AT), 10)
    run, scores = search_all(index, coll.queries, k, task, s.instruction, s.show_progress)
    run_file = s.work / "runs" / f"{s.root.name}_{s.split}.trec"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    write_trec_run(run_file, run, scores)
    means, per_query = beir_metrics(run, coll.qrels, s.recall_at)
    if not per_query:
        raise InputError(f"{coll.qrels_file}: no query has a relevant document (every score is <= 0)")
    return BeirResult(s.root.name, s.split, means, queries=len(coll.queries), scored=len(per_query),
                      no_relevant=len(coll.queries) - len(per_query), corpus_size=len(coll.corpus),
                      rejected=rejected, task=task, index=index.manifest.faiss.factory, run_file=str(run_file),
                      seconds=round(time.perf_counter() - start, 2), per_query=per_query)


def beir_report(out_dir: Path, result: BeirResult, header: dict) -> Dict[str, str]:
    """WORK/beir_report.{json,md,png}: the means, sizes and per-query metrics."""
    body = markdown_table(["metric", "value"], [[k, v] for k, v in result.metrics.items()])
    body += "\n" + markdown_table(["collection", "split", "queries", "scored", "no relevant doc", "corpus",
                                   "not indexed", "task", "index", "seconds"],
                                  [[result.name, result.split, result.queries, result.scored, result.no_relevant,
                                    result.corpus_size, result.rejected, result.task, result.index, result.seconds]])
    data = {"result": asdict(result)}
    return write_report(out_dir, "beir_report", f"BEIR: {result.name} ({result.split})", header, body, data,
                        (list(result.metrics), list(result.metrics.values()), f"{result.name}", "value"))
