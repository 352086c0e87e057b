"""Ranking metrics over runs (qid -> ranked doc ids) and qrels (qid -> relevant ids).

Definitions follow the benchmarks: M-BEIR's Recall@k is hit@k (1 when any
relevant candidate is in the top k); nDCG@k uses binary gains and the ideal
ranking of all relevant candidates (as trec_eval), or graded gains when the
relevant candidates come as a mapping id -> gain (trec_eval's linear gains, as BEIR
reports); BEIR's recall@k (`recall_at`) is the fraction of the relevant candidates
found in the top k; MRR@k is the reciprocal
rank of the first relevant candidate within k. Tests cross-check these with
trec_eval (pytrec_eval) on random runs.
"""
from __future__ import annotations

import math
from typing import Collection, Dict, Iterable, List, Mapping, Sequence, Set, Union

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Set[str]]


def hit_at(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    return 1.0 if any(d in relevant for d in ranked[:k]) else 0.0


def recall_at(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    return sum(1 for d in ranked[:k] if d in relevant) / len(relevant) if relevant else 0.0


def ndcg_at(ranked: Sequence[str], relevant: Union[Set[str], Mapping[str, float]], k: int) -> float:
    """Binary gains for a set of relevant ids; graded gains for a mapping id -> gain."""
    gains = relevant if isinstance(relevant, Mapping) else dict.fromkeys(relevant, 1.0)
    dcg = sum(gains.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    best = sorted((g for g in gains.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(best))
    return dcg / ideal if ideal else 0.0


def mrr_at(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if d in relevant:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(run: Run, qrels: Qrels, recall_at: Iterable[int] = (1, 5, 10), ndcg_k: int = 10,
             mrr_k: int = 10) -> Dict[str, float]:
    """Mean metrics over the queries that have qrels; a query missing from the run scores 0."""
    qids = [q for q in qrels if qrels[q]]
    if not qids:
        return {}
    out: Dict[str, float] = {}
    for k in recall_at:
        out[f"recall@{k}"] = sum(hit_at(run.get(q, ()), qrels[q], k) for q in qids) / len(qids)
    out[f"ndcg@{ndcg_k}"] = sum(ndcg_at(run.get(q, ()), qrels[q], ndcg_k) for q in qids) / len(qids)
    out[f"mrr@{mrr_k}"] = sum(mrr_at(run.get(q, ()), qrels[q], mrr_k) for q in qids) / len(qids)
    return out


def write_trec_run(path, run: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]],
                   name: str = "mmsearch") -> None:
    """TREC run format: `qid Q0 docid rank score name`, ranks from 1."""
    from ..index_format import atomic_write_bytes

    lines: List[str] = []
    for qid in run:
        for rank, (did, score) in enumerate(zip(run[qid], scores[qid]), start=1):
            lines.append(f"{qid} Q0 {did} {rank} {score:.6f} {name}\n")
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))


def read_trec_run(path) -> Dict[str, List[str]]:
    run: Dict[str, List[tuple]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            qid, _, did, rank, _score, _ = line.split()
            run.setdefault(qid, []).append((int(rank), did))
    return {q: [d for _, d in sorted(v)] for q, v in run.items()}
