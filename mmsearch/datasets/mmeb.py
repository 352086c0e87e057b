"""The MMEB layouts (VLM2Vec): MMEB-eval tables and MMEB-train pairs.

MMEB-eval (``format="mmeb"``), one table per dataset, as ``TIGER-Lab/MMEB-eval``
has one config per dataset with a ``test`` split::

    <root>/<Dataset>/<split>.parquet (or .jsonl)   qry_text, qry_img_path, tgt_text[], tgt_img_path[]
    <root>/images/<Dataset>/<split>/<name>.png
    <root>/tasks.tsv                               the columns of reference/mmeb_v1_tasks.tsv

Image paths are relative to ``<root>/images`` (VLM2Vec's ``--image_dir``), as in
MMEB-eval ("CIRR/dev-1028-1-img1.jpg"). Each query has its own candidate list,
the positive first; composed queries always list their source image.

MMEB-train (``format="train"``), one table per dataset plus all of a split in one::

    <root>/<Dataset>/<split>.parquet, <root>/<split>.parquet
        qry, qry_image_path, pos_text, pos_image_path, neg_text, neg_image_path,
        and two extra columns: dataset, src_content (the ground truth as JSON)
    <root>/images/<Dataset>/<split>/<name>.png

Image paths are relative to ``<root>`` ("images/SynthEdit/train/composed_000001_source.png"),
as in MMEB-train; an absent image or text is "".

With ``doc_titles``, ``<root>/SynthDocTitles/<split>`` also holds one text-only row per
page question: the same query, and the page's title (its keyword) as the positive
text. It is not part of ``<root>/<split>``; it teaches the queries to carry the
keyword before pages are read (a curriculum stage, see the tiny model's card).

Strings follow MMEB: a query with an image is ``"<|image_1|>\\n{instruction} {text}\\n"``, one
without is ``"{instruction} {text}\\n"``; an image candidate is
``"<|image_1|>\\n{candidate instruction}\\n"`` and a text candidate its bare text.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional

import numpy as np

from .collection import Collection, Entry, Example, TaskData
from .options import SPLITS
from .output import Output
from .specs import TASK_SPECS, TASKS, mmeb_candidate, mmeb_text

MMEB_SCHEMA = {"qry_text": "string", "qry_img_path": "string", "tgt_text": "strings", "tgt_img_path": "strings"}
TRAIN_SCHEMA = {"qry": "string", "qry_image_path": "string", "pos_text": "string", "pos_image_path": "string",
                "neg_text": "string", "neg_image_path": "string", "dataset": "string", "src_content": "string"}
TASKS_HEADER = ("dataset", "meta_task", "split", "query_modality", "target_modality", "n_candidates",
                "query_instruction", "source_of_instruction")


DOC_TITLES = "SynthDocTitles"


def owned(fmt: str) -> List[str]:
    names = ["images", "README.md", DOC_TITLES] + [TASK_SPECS[t].mmeb_name for t in TASKS]
    return names + (["tasks.tsv"] if fmt == "mmeb" else [f"{s}.{ext}" for s in SPLITS for ext in ("parquet", "jsonl")])


def _path(data: TaskData, entry: Optional[Entry], prefix: str) -> str:
    if entry is None or entry.picture is None:
        return ""
    return f"{prefix}{data.spec.mmeb_name}/{entry.picture.name}.png"


def _query_text(data: TaskData, ex: Example) -> str:
    return mmeb_text(data.spec.instruction, ex.query.text, ex.query.picture is not None)


def _cand_text(data: TaskData, entry: Optional[Entry]) -> str:
    return "" if entry is None else mmeb_candidate(data.spec, entry.text, entry.picture is not None)


# ----------------------------------------------------------------- MMEB-eval

def _candidates(rng: np.random.Generator, data: TaskData, index: Dict[Entry, int], ex: Example,
                limit: int) -> List[Entry]:
    """The positive, then up to ``limit - 1`` others: in-pool hard negatives always,
    the rest drawn from the split's pool, all shuffled."""
    hard = [n for n in ex.negatives if n != ex.positive]
    taken = sorted({index[e] for e in hard + [ex.positive] if e in index})
    others = np.delete(np.arange(len(data.pool)), taken)
    room = max(0, min(limit - 1 - len(hard), len(others)))
    picked = [data.pool[i] for i in np.sort(rng.choice(others, size=room, replace=False))] if room else []
    rest = hard[:limit - 1] + picked
    return [ex.positive] + [rest[i] for i in rng.permutation(len(rest))]


def write_mmeb(coll: Collection, out: Output) -> dict:
    o = coll.options
    _save_images(coll, out, prefix="images/", with_negatives=False)
    tables, counts = [], {}
    for (task, split), data in coll.parts.items():
        rng = np.random.default_rng([o.seed, 104729, TASKS.index(task), SPLITS.index(split)])
        index = {e: i for i, e in enumerate(data.pool)}
        rows = []
        for ex in data.examples:
            cands = _candidates(rng, data, index, ex, o.num_candidates)
            rows.append({"qry_text": _query_text(data, ex), "qry_img_path": _path(data, ex.query, ""),
                         "tgt_text": [_cand_text(data, c) for c in cands],
                         "tgt_img_path": [_path(data, c, "") for c in cands]})
        tables.append(out.write_table(f"{data.spec.mmeb_name}/{split}", rows, MMEB_SCHEMA))
        counts.setdefault(data.spec.mmeb_name, {})[split] = len(rows)
    _write_tasks_tsv(coll, out)
    return {"datasets": list(counts), "queries": counts, "tables": tables, "image_dir": "images"}


def _write_tasks_tsv(coll: Collection, out: Output) -> None:
    lines = ["\t".join(TASKS_HEADER)]
    for task in coll.options.tasks:
        spec = TASK_SPECS[task]
        pools = [len(d.pool) for d in coll.of_task(task)]
        n = min(coll.options.num_candidates, max(pools)) if pools else coll.options.num_candidates
        split = "OOD" if coll.held_out else "IND"
        lines.append("\t".join([spec.mmeb_name, spec.meta_task, split, spec.query_modality, spec.cand_modality,
                                str(n), spec.instruction, "mmsearch synthetic"]))
    out.write_text("tasks.tsv", "\n".join(lines) + "\n")


# ----------------------------------------------------------------- MMEB-train

def write_train(coll: Collection, out: Output) -> dict:
    _save_images(coll, out, prefix="images/", with_negatives=True)
    tables, counts, by_split = [], {}, {}
    for (task, split), data in coll.parts.items():
        rows = [_train_row(data, ex) for ex in data.examples]
        tables.append(out.write_table(f"{data.spec.mmeb_name}/{split}", rows, TRAIN_SCHEMA))
        counts.setdefault(data.spec.mmeb_name, {})[split] = len(rows)
        by_split.setdefault(split, []).extend(rows)
    for split, rows in by_split.items():
        tables.append(out.write_table(split, rows, TRAIN_SCHEMA))
    if coll.options.doc_titles:
        for (task, split), data in coll.parts.items():
            if task == "doc":
                rows = [_title_row(data, ex) for ex in data.examples]
                tables.append(out.write_table(f"{DOC_TITLES}/{split}", rows, TRAIN_SCHEMA))
                counts.setdefault(DOC_TITLES, {})[split] = len(rows)
    return {"datasets": list(counts), "queries": counts, "tables": tables}


def _title_row(data: TaskData, ex: Example) -> dict:
    """Question -> the page's title as text (no image)."""
    title = ex.positive.picture.page.title
    return {"qry": _query_text(data, ex), "qry_image_path": "", "pos_text": title, "pos_image_path": "",
            "neg_text": "", "neg_image_path": "", "dataset": DOC_TITLES,
            "src_content": json.dumps({"keyword": ex.facts["keyword"], "title": title}, ensure_ascii=False)}


def _train_row(data: TaskData, ex: Example) -> dict:
    neg = ex.hard_negative
    return {"qry": _query_text(data, ex), "qry_image_path": _path(data, ex.query, "images/"),
            "pos_text": _cand_text(data, ex.positive), "pos_image_path": _path(data, ex.positive, "images/"),
            "neg_text": _cand_text(data, neg), "neg_image_path": _path(data, neg, "images/"),
            "dataset": data.spec.mmeb_name, "src_content": json.dumps(dict(ex.facts), ensure_ascii=False)}


def _save_images(coll: Collection, out: Output, prefix: str, with_negatives: bool) -> None:
    items = []
    for data in coll.parts.values():
        entries = [e for ex in data.examples for e in (ex.query, ex.positive, *ex.negatives)]
        if with_negatives:
            entries += [ex.hard_negative for ex in data.examples if ex.hard_negative is not None]
        else:
            entries += data.pool
        items += [(e.picture, _path(data, e, prefix)) for e in entries if e.picture is not None]
    out.save_pictures(items)
