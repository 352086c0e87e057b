"""MMEB (VLM2Vec's benchmark): each query is scored exactly against its own candidates.

Layout: `ROOT/<Dataset>/test.{parquet,jsonl}` with `qry_text` (or `qry`), `qry_img_path`,
`tgt_text` (list), `tgt_img_path` (list), the positive first; optional `qry_inst`
(the V2 loaders' split form). Image paths are relative to `ROOT/images` (VLM2Vec's
--image_dir) unless `image_root` says otherwise. Metric: hit@1 (argmax == 0, the
first maximum winning ties, as numpy's argmax in the reference), averaged per
meta-task (classification, vqa, retrieval, grounding) and over IND / OOD sets.

Input strings follow the protocol: the table's strings are used verbatim with the
Phi-3.5-V image token `<|image_1|>` replaced by the backbone's; image-task queries
get `replace(" \\n", "\\n")` and a final "\\n" (applied only when missing, so V1
strings that already end in one are unchanged, and V2-style `qry_inst` + `qry_text`
rows become exactly the V1 strings).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..encoders.base import Request
from ..datasets.specs import IMAGE_TOKEN as MMEB_IMAGE_TOKEN
from ..encoders.formatting import IMAGE_TOKENS

# families whose input string is VLM2Vec's (dual encoders strip the image token)
VERBATIM_FAMILIES = ("vlm2vec", "mmsearch", "clip", "siglip")
from ..errors import ImageError, InputError
from ..images import load_image

PHI_TOKEN = MMEB_IMAGE_TOKEN  # MMEB writes Phi-3.5-V's image token
TABLE_NAMES = ("test.parquet", "test.jsonl")
META_TASKS = ("classification", "vqa", "retrieval", "grounding")


@dataclass
class DatasetResult:
    name: str
    hit_at_1: float
    queries: int
    skipped: int
    candidates: int
    seconds: float
    meta_task: str = "unknown"
    split: str = "unknown"
    skip_reasons: Dict[str, int] = field(default_factory=dict)


def read_rows(path: Path) -> List[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise InputError(f"{path}:{n}: broken JSON line: {e}") from None
    return rows


def find_datasets(root: Path, names: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise InputError(f"MMEB root {root} {what}; expected a folder of <Dataset>/test.parquet or test.jsonl tables")
    found = {d.name: d / t for d in sorted(root.iterdir()) if d.is_dir() for t in TABLE_NAMES if (d / t).is_file()}
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise InputError(f"MMEB datasets {missing} not found under {root}; found: {sorted(found) or 'none'}")
        found = {n: found[n] for n in names}
    if not found:
        raise InputError(f"no MMEB tables (<Dataset>/test.parquet or test.jsonl) under {root}")
    return found


def task_table(root: Path) -> Dict[str, Tuple[str, str]]:
    """dataset -> (meta_task, IND/OOD), from ROOT/tasks.tsv or the packaged MMEB-V1 table."""
    from ..tasks import read_mmeb_table

    path = root / "tasks.tsv"
    if path.is_file():
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t"))
    else:
        rows = read_mmeb_table()
    return {r["dataset"]: (r["meta_task"], r["split"]) for r in rows}


def query_prompt(row: dict, token: str) -> str:
    text = row.get("qry_text", row.get("qry")) or ""
    has_image = bool((row.get("qry_img_path") or "").strip())
    if "qry_inst" in row:  # V2 split form: token + instruction + text
        inst = (row.get("qry_inst") or "").replace(PHI_TOKEN, "")
        text = " ".join(p for p in ([PHI_TOKEN] if has_image else []) + [inst] + ([text] if text else []))
    prompt = text.replace(PHI_TOKEN, token)
    if has_image:
        prompt = prompt.replace(" \n", "\n")
        prompt = prompt if prompt.endswith("\n") else prompt + "\n"
    return _token_iff_image(prompt, token, has_image)


def _token_iff_image(prompt: str, token: str, has_image: bool) -> str:
    if has_image and token not in prompt:
        return f"{token} {prompt}" if prompt else token
    if not has_image:
        return prompt.replace(token, "").strip()
    return prompt


class _Inputs:
    """Unique (prompt, image path) inputs, decoded once, so shared candidates encode once."""

    def __init__(self, image_root: Path, max_pixels):
        self.image_root = image_root
        self.max_pixels = max_pixels
        self.keys: Dict[Tuple[str, str], int] = {}
        self.requests: List[Request] = []

    def add(self, prompt: str, image_path: str) -> int:
        key = (prompt, image_path or "")
        if key not in self.keys:
            image = load_image(str(self.image_root / image_path), max_pixels=self.max_pixels) if image_path else None
            self.keys[key] = len(self.requests)
            self.requests.append(Request(text=None, image=image, instruction=None, prompt=prompt))
        return self.keys[key]


def evaluate_dataset(encoder, name: str, table: Path, image_root: Path, batch_size=None,
                     show_progress=False) -> DatasetResult:
    start = time.perf_counter()
    if getattr(encoder, "family", None) not in VERBATIM_FAMILIES:
        raise InputError(f"eval mmeb feeds MMEB's own input strings, which are VLM2Vec's; the {encoder.family} "
                         f"family builds its own prompts: evaluate it with `mmsearch eval mbeir` "
                         f"(families that take MMEB strings: {', '.join(VERBATIM_FAMILIES)})")
    token = IMAGE_TOKENS.get(encoder.backbone, PHI_TOKEN)
    queries, cands = _Inputs(image_root, encoder.max_pixels), _Inputs(image_root, encoder.max_pixels)
    plan, reasons = [], {}
    for row in read_rows(table):
        try:
            q = queries.add(query_prompt(row, token), (row.get("qry_img_path") or "").strip())
            texts, paths = list(row.get("tgt_text") or []), list(row.get("tgt_img_path") or [])
            paths += [""] * (len(texts) - len(paths))
            if not texts:
                raise InputError("the query has no candidates")
            c = [cands.add(_token_iff_image(t.replace(PHI_TOKEN, token), token, bool(p.strip())), p.strip())
                 for t, p in zip(texts, paths)]
            plan.append((q, c))
        except (ImageError, InputError) as e:
            reason = str(e).split(":")[-1].strip() or type(e).__name__
            reasons[reason] = reasons.get(reason, 0) + 1
    hits = _score(encoder, queries, cands, plan, batch_size, show_progress)
    return DatasetResult(name=name, hit_at_1=float(np.mean(hits)) if hits else 0.0, queries=len(plan),
                         skipped=sum(reasons.values()), candidates=len(cands.requests),
                         seconds=round(time.perf_counter() - start, 2), skip_reasons=reasons)


def _score(encoder, queries: _Inputs, cands: _Inputs, plan, batch_size, show_progress) -> List[float]:
    if not plan:
        return []
    qv = encoder.encode_requests(queries.requests, batch_size=batch_size, show_progress=show_progress)
    cv = encoder.encode_requests(cands.requests, batch_size=batch_size, show_progress=show_progress)
    return [float(np.argmax(cv[c] @ qv[q]) == 0) for q, c in plan]


def summarize(results: List[DatasetResult], tasks: Dict[str, Tuple[str, str]]) -> Dict[str, float]:
    for r in results:
        r.meta_task, r.split = tasks.get(r.name, ("unknown", "unknown"))
    groups: Dict[str, List[float]] = {}
    for r in results:
        for key in (r.meta_task, r.split, "overall"):
            groups.setdefault(key, []).append(r.hit_at_1)
    return {k: round(float(np.mean(v)), 4) for k, v in groups.items()}
