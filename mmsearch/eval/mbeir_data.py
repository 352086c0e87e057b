"""Reading an M-BEIR collection exactly as UniIR lays it out (DESIGN.md §7)."""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ..errors import InputError

# UniIR's task ids: query modality -> candidate modality
TASK_MODALITIES = {
    0: ("text", "image"), 1: ("text", "text"), 2: ("text", "image,text"),
    3: ("image", "text"), 4: ("image", "image"), 5: ("image", "image,text"),
    6: ("image,text", "text"), 7: ("image,text", "image"), 8: ("image,text", "image,text"),
}
QUERY_FILE = re.compile(r"^mbeir_(?P<ds>.+)_task(?P<task>\d+)_(?P<split>train|val|test)\.jsonl$")
DEFAULT_RECALL_AT = (1, 5, 10)


@dataclass(frozen=True)
class Pair:
    name: str                 # e.g. "visualnews_task0"
    dataset: str
    task_id: int
    split: str
    query_file: Path
    local_pool: Path
    qrels_file: Path
    recall_at: Tuple[int, ...]

    @property
    def modalities(self) -> Tuple[str, str]:
        return TASK_MODALITIES.get(self.task_id, ("", ""))


def reference_recall_at() -> Dict[str, Tuple[int, ...]]:
    text = resources.files("mmsearch").joinpath("data").joinpath("mbeir_tasks.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return {r["eval_pair"]: tuple(int(k) for k in r["recall_at"].split(",")) for r in rows}


def _local_pool(root: Path, ds: str, task: str, split: str) -> Path:
    local = root / "cand_pool" / "local"
    plain = local / f"mbeir_{ds}_task{task}_cand_pool.jsonl"
    per_split = local / f"mbeir_{ds}_task{task}_{split}_cand_pool.jsonl"  # MSCOCO's naming
    return per_split if per_split.is_file() and not plain.is_file() else plain


def discover_pairs(root: Path, split: str, names: Optional[Sequence[str]] = None) -> List[Pair]:
    qdir = root / "query" / split
    if not qdir.is_dir():
        raise InputError(f"{qdir} does not exist: not an M-BEIR root (expected query/{split}/mbeir_*_{split}.jsonl)")
    ks = reference_recall_at()
    pairs = []
    for f in sorted(qdir.glob(f"mbeir_*_{split}.jsonl")):
        m = QUERY_FILE.match(f.name)
        if not m:
            continue
        ds, task = m["ds"], m["task"]
        name = f"{ds}_task{task}"
        pairs.append(Pair(name, ds, int(task), split, f, _local_pool(root, ds, task, split),
                          root / "qrels" / split / f"mbeir_{ds}_task{task}_{split}_qrels.txt",
                          ks.get(name, DEFAULT_RECALL_AT)))
    if names:
        known = {p.name for p in pairs}
        missing = [n for n in names if n not in known]
        if missing:
            raise InputError(f"pairs {missing} have no query file in {qdir}; found: {sorted(known) or 'none'}")
        pairs = [p for p in pairs if p.name in names]
    if not pairs:
        raise InputError(f"no query files mbeir_<dataset>_task<N>_{split}.jsonl in {qdir}")
    return pairs


def global_pool(root: Path, split: str) -> Path:
    return root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl"


def read_queries(path: Path) -> Tuple[List[dict], Dict[str, int]]:
    """Query rows and counted problems (broken lines, missing qid)."""
    rows, problems = [], {}
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                if not isinstance(row, dict) or not row.get("qid"):
                    raise ValueError("no qid")
                rows.append(row)
            except (ValueError, UnicodeDecodeError) as e:
                key = f"unreadable query line ({type(e).__name__})"
                problems[key] = problems.get(key, 0) + 1
    return rows, problems


def positives(row: dict) -> Set[str]:
    """pos_cand_list entries are dids as strings or objects with `did`: accept both."""
    out = set()
    for p in row.get("pos_cand_list") or []:
        did = p.get("did") if isinstance(p, dict) else p
        if did is not None:
            out.add(str(did))
    return out


def read_qrels(path: Path, queries: List[dict]) -> Dict[str, Set[str]]:
    """qid -> relevant dids from the qrels file (`qid 0 did rel task_id`), else pos_cand_list."""
    if not path.is_file():
        return {str(q["qid"]): positives(q) for q in queries}
    qrels: Dict[str, Set[str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4:
                raise InputError(f"{path}:{n}: expected `qid 0 did relevance [task_id]`, got {line.strip()!r}")
            if float(parts[3]) > 0:
                qrels.setdefault(parts[0], set()).add(parts[2])
    return qrels


def pool_ids(path: Path) -> Set[str]:
    ids = set()
    with open(path, "rb") as f:
        for raw in f:
            try:
                ids.add(str(json.loads(raw)["did"]))
            except (ValueError, KeyError, TypeError):
                continue
    return ids
