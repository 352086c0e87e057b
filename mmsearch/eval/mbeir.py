"""`mmsearch eval mbeir`: M-BEIR retrieval over local pools and the global union pool.

Candidate pools are indexed through the indexer (so an interrupted run resumes:
indexes pick up where they stopped and finished pairs are read back from
`WORK/results/`); queries are encoded with the pair's M-BEIR prompt as the
instruction ("{prompt} {query_txt}" plus the image), searched, written as TREC
run files, and scored with Recall@k (= hit@k, the k of the reference table),
nDCG@10 and MRR@10.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import ImageError, InputError, MMSearchError
from ..index_format import atomic_write_json, errors_path
from ..types import Query
from .mbeir_data import Pair, discover_pairs, global_pool, pool_ids, read_qrels, read_queries
from .metrics import evaluate, write_trec_run

POOLS = ("local", "global")


@dataclass
class PairResult:
    pair: str
    pool: str
    metrics: Dict[str, float]
    queries: int
    scored: int
    skipped: Dict[str, int] = field(default_factory=dict)
    unknown_qrels_dids: int = 0
    pool_size: int = 0
    index: str = ""
    seconds: float = 0.0
    error: Optional[str] = None


@dataclass(frozen=True)
class MBeirSettings:
    root: Path
    work: Path
    split: str = "test"
    pairs: Optional[Sequence[str]] = None
    pools: Sequence[str] = POOLS
    prompt: str = "first"          # or "random"
    seed: int = 0
    batch_size: Optional[int] = None
    index: str = "auto"
    fresh: bool = False
    show_progress: bool = False
    build_options: Mapping[str, Any] = field(default_factory=dict)  # more build_index settings (compact codes)


def _prompt_table(root: Path) -> Dict[tuple, tuple]:
    from ..tasks import load_mbeir_instructions

    tasks = load_mbeir_instructions(root / "instructions" / "query_instructions.tsv")
    return {(t.dataset_id, t.query_modality, t.candidate_modality): t.prompts or (t.query_instruction,)
            for t in tasks.values()}


def _prompt_for(row: dict, pair: Pair, prompts: Dict[tuple, tuple], rng: Optional[random.Random]) -> str:
    dataset_id = str(row["qid"]).split(":")[0]
    key = (dataset_id, row.get("query_modality") or pair.modalities[0], pair.modalities[1])
    options = prompts.get(key)
    if not options:
        raise InputError(f"no M-BEIR instruction for dataset_id={key[0]} {key[1]} -> {key[2]} "
                         f"in instructions/query_instructions.tsv")
    return rng.choice(options) if rng else options[0]


def _queries(rows: List[dict], pair: Pair, s: MBeirSettings, prompts) -> tuple:
    """Query objects for the rows that can be encoded, and counted reasons for the others."""
    from ..images import load_image

    rng = random.Random(f"{s.seed}:{pair.name}") if s.prompt == "random" else None
    kept, queries, skipped = [], [], {}
    for row in rows:
        try:
            text = row.get("query_txt") or None
            img = row.get("query_img_path")
            image = load_image(str(s.root / img)) if img else None
            if not text and image is None:
                raise InputError("query has neither text nor image")
            queries.append(Query(text=text, image=image, instruction=_prompt_for(row, pair, prompts, rng)))
            kept.append(str(row["qid"]))
        except (ImageError, InputError) as e:
            reason = "missing or bad query image" if isinstance(e, ImageError) else str(e)
            skipped[reason] = skipped.get(reason, 0) + 1
    return kept, queries, skipped


def _index_pool(pool: Path, out: Path, s: MBeirSettings, encoder) -> "object":
    from ..indexer.build import build_index
    from ..query import open_index

    if not pool.is_file():
        raise InputError(f"candidate pool {pool} does not exist")
    r = build_index([pool], out, encoder=encoder, index=s.index, source_kind="mbeir",
                    source_options={"root": str(s.root)}, batch_size=s.batch_size, thumbnails=False,
                    show_progress=s.show_progress, **s.build_options)
    if r.rows == 0:
        raise InputError(f"candidate pool {pool} is empty (or every candidate was rejected; see "
                         f"{errors_path(out)})")
    return open_index(out, encoder=encoder)


def _search(index, encoder, qids, queries, k: int, batch_size) -> tuple:
    xq = encoder.encode(queries, batch_size=batch_size, show_progress=False) if queries else np.zeros((0, 1))
    D, I = index.search_vectors(np.ascontiguousarray(xq, dtype=np.float32), k) if queries else ([], [])
    run, scores = {}, {}
    for qid, drow, irow in zip(qids, D, I):
        valid = [int(r) for r in irow if r >= 0]
        run[qid] = [rec["id"] for rec in index.records(valid)]
        scores[qid] = [float(x) for x, r in zip(drow, irow) if r >= 0]
    return run, scores


def run_pair(pair: Pair, pool_name: str, index, encoder, s: MBeirSettings, prompts, pool_dids) -> PairResult:
    start = time.perf_counter()
    rows, problems = read_queries(pair.query_file)
    qrels = read_qrels(pair.qrels_file, rows)
    qids, queries, skipped = _queries(rows, pair, s, prompts)
    skipped.update(problems)
    k = max(max(pair.recall_at), 10)
    run, scores = _search(index, encoder, qids, queries, k, s.batch_size)
    runs_dir = s.work / "runs" / pool_name
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_trec_run(runs_dir / f"{pair.name}_{s.split}.trec", run, scores)
    judged = {q: qrels.get(q, set()) for q in qids}
    no_qrels = sum(1 for q in qids if not judged[q])
    if no_qrels:
        skipped["no relevant candidate in qrels"] = no_qrels
    unknown = sum(len(d - pool_dids) for d in judged.values())
    return PairResult(pair.name, pool_name, evaluate(run, judged, pair.recall_at), queries=len(rows) + sum(problems.values()),
                      scored=len(qids) - no_qrels, skipped=skipped, unknown_qrels_dids=unknown,
                      pool_size=len(pool_dids), index=index.manifest.faiss.factory,
                      seconds=round(time.perf_counter() - start, 2))


def _cached(path: Path, fresh: bool) -> Optional[PairResult]:
    if fresh or not path.is_file():
        return None
    return PairResult(**json.loads(path.read_text()))


def run_mbeir(s: MBeirSettings, encoder) -> List[PairResult]:
    """Every (pair, pool) result; a pair that fails records its error and the others go on."""
    pairs = discover_pairs(s.root, s.split, s.pairs)
    prompts = _prompt_table(s.root)
    results = []
    for pool_name in s.pools:
        if pool_name not in POOLS:
            raise InputError(f"pool {pool_name!r}; valid: {', '.join(POOLS)}")
        shared = None
        for pair in pairs:
            out = s.work / "results" / pool_name / f"{pair.name}_{s.split}.json"
            done = _cached(out, s.fresh)
            if done is None:
                done, shared = _evaluate(pair, pool_name, encoder, s, prompts, shared)
                out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(out, asdict(done))
            results.append(done)
    return results


def _evaluate(pair, pool_name, encoder, s, prompts, shared):
    """One pair on one pool; `shared` carries the global pool's index between pairs."""
    pool = pair.local_pool if pool_name == "local" else global_pool(s.root, s.split)
    try:
        if pool_name == "global" and shared is not None:
            index, dids = shared
        else:
            where = s.work / "indexes" / pool_name / (pair.name if pool_name == "local" else s.split)
            index, dids = _index_pool(pool, where, s, encoder), pool_ids(pool)
            if pool_name == "global":
                shared = (index, dids)
        return run_pair(pair, pool_name, index, encoder, s, prompts, dids), shared
    except MMSearchError as e:
        return PairResult(pair.name, pool_name, {}, 0, 0, error=str(e)), shared
