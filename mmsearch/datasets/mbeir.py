"""The M-BEIR layout (UniIR), as its published dataset is laid out::

    query/{split}/mbeir_<ds>_task<N>_<split>.jsonl
        qid, query_txt, query_img_path, query_modality, query_src_content,
        pos_cand_list, neg_cand_list, task_id
    cand_pool/local/mbeir_<ds>_task<N>_cand_pool.jsonl      txt, img_path, modality, did, src_content
    cand_pool/global/mbeir_union_<split>_cand_pool.jsonl
    qrels/{split}/mbeir_<ds>_task<N>_<split>_qrels.txt      "qid 0 did 1 task_id"
    instructions/query_instructions.tsv                     header, then query_modality, cand_modality,
                                                            dataset, dataset_id, prompt_1..prompt_4
    mbeir_images/<ds>_images/<split>/<name>.png             paths relative to the root

As in UniIR's preprocessors: ids are "dataset_id:n" counted from 1 per dataset,
absent fields are null, ``*src_content`` is a JSON string (here: the ground truth),
and qrels lines are ``f"{qid} 0 {did} 1 {task_id}"``.

Pools: as in M-BEIR, a local pool holds the dataset's evaluation candidates, of
the val and test splits (of all splits if only train is generated); the global
pool of a split is the union of every task's candidates of that split. Train
queries' candidates are in ``mbeir_union_train_cand_pool.jsonl``.
"""
from __future__ import annotations

import json
from typing import Dict, List, Tuple

from .collection import Collection, Entry
from .docs import visible_text
from .output import Output
from .specs import TASK_SPECS, TaskSpec

OWNED = ("query", "cand_pool", "qrels", "instructions", "mbeir_images", "README.md")
INSTRUCTIONS_HEADER = ("query_modality", "cand_modality", "dataset", "dataset_id",
                       "prompt_1", "prompt_2", "prompt_3", "prompt_4")


def image_path(spec: TaskSpec, entry: Entry):
    if entry.picture is None:
        return None
    return f"mbeir_images/{spec.dataset.lower()}_images/{entry.picture.name}.png"


def _assign_ids(coll: Collection) -> Tuple[Dict[Tuple[str, Entry], str], Dict[Tuple[str, str, int], str]]:
    """dids per (task, candidate) and qids per (task, split, index), "dataset_id:n" from 1."""
    counters: Dict[int, List[int]] = {}
    dids, qids = {}, {}
    for (task, split), data in coll.parts.items():
        qc, dc = counters.setdefault(data.spec.dataset_id, [0, 0])
        for entry in data.pool:
            if (task, entry) not in dids:
                dc += 1
                dids[(task, entry)] = f"{data.spec.dataset_id}:{dc}"
        for i in range(len(data.examples)):
            qc += 1
            qids[(task, split, i)] = f"{data.spec.dataset_id}:{qc}"
        counters[data.spec.dataset_id] = [qc, dc]
    return dids, qids


def _candidate_src(entry: Entry, coll: Collection) -> dict:
    o = coll.options
    if entry.picture is not None and entry.picture.scene is not None:
        return {"caption": entry.picture.scene.caption(), **entry.picture.scene.facts()}
    if entry.picture is not None:
        page = entry.picture.page
        return {"keyword": page.keyword, "page_text": visible_text(page, o.page_size, o.doc)}
    return {"text": entry.text}


def _pool_row(spec: TaskSpec, entry: Entry, did: str, coll: Collection) -> dict:
    return {"txt": entry.text or None, "img_path": image_path(spec, entry), "modality": entry.modality,
            "did": did, "src_content": json.dumps(_candidate_src(entry, coll), ensure_ascii=False)}


def _did_key(did: str) -> Tuple[int, int]:
    ds, n = did.split(":")
    return int(ds), int(n)


def write_mbeir(coll: Collection, out: Output) -> dict:
    dids, qids = _assign_ids(coll)
    pictures = []
    for data in coll.parts.values():
        for entry in [e.query for e in data.examples] + data.pool:
            if entry.picture is not None:
                pictures.append((entry.picture, image_path(data.spec, entry)))
    out.save_pictures(pictures)
    queries = {}
    for (task, split), data in coll.parts.items():
        spec, rows, qrels = data.spec, [], []
        for i, ex in enumerate(data.examples):
            qid, pos = qids[(task, split, i)], dids[(task, ex.positive)]
            rows.append({"qid": qid, "query_txt": ex.query.text or None, "query_img_path": image_path(spec, ex.query),
                         "query_modality": ex.query.modality,
                         "query_src_content": json.dumps(dict(ex.facts), ensure_ascii=False),
                         "pos_cand_list": [pos], "neg_cand_list": [dids[(task, n)] for n in ex.negatives],
                         "task_id": spec.task_id})
            qrels.append(f"{qid} 0 {pos} 1 {spec.task_id}\n")
        out.write_jsonl(f"query/{split}/mbeir_{spec.pair}_{split}.jsonl", rows)
        out.write_text(f"qrels/{split}/mbeir_{spec.pair}_{split}_qrels.txt", "".join(qrels))
        queries.setdefault(spec.pair, {})[split] = len(rows)
    pools = _write_pools(coll, out, dids)
    _write_instructions(coll, out)
    return {"pairs": list(queries), "queries": queries, "pool_sizes": pools}


def _write_pools(coll: Collection, out: Output, dids) -> dict:
    splits = coll.options.active_splits()
    local_splits = [s for s in splits if s != "train"] or list(splits)
    sizes: Dict[str, Dict[str, int]] = {"local": {}, "global": {}}
    rows_by_split: Dict[str, Dict[str, dict]] = {s: {} for s in splits}
    local: Dict[str, Dict[str, dict]] = {}
    for (task, split), data in coll.parts.items():
        for entry in data.pool:
            did = dids[(task, entry)]
            row = _pool_row(data.spec, entry, did, coll)
            rows_by_split[split][did] = row
            if split in local_splits:
                local.setdefault(data.spec.pair, {})[did] = row
    for pair, rows in local.items():
        ordered = [rows[d] for d in sorted(rows, key=_did_key)]
        out.write_jsonl(f"cand_pool/local/mbeir_{pair}_cand_pool.jsonl", ordered)
        sizes["local"][pair] = len(ordered)
    for split, rows in rows_by_split.items():
        ordered = [rows[d] for d in sorted(rows, key=_did_key)]
        out.write_jsonl(f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl", ordered)
        sizes["global"][split] = len(ordered)
    return sizes


def _write_instructions(coll: Collection, out: Output) -> None:
    lines = ["\t".join(INSTRUCTIONS_HEADER)]
    for task in coll.options.tasks:
        spec = TASK_SPECS[task]
        lines.append("\t".join([spec.query_modality, spec.cand_modality, spec.dataset, str(spec.dataset_id),
                                *spec.prompts]))
    out.write_text("instructions/query_instructions.tsv", "\n".join(lines) + "\n")
