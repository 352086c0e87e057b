"""Training data in the MMEB-train layout (VLM2Vec): JSONL or Parquet tables with
`qry`, `qry_image_path`, `pos_text`, `pos_image_path` and optional `neg_text`,
`neg_image_path`. Image paths are relative to the table's folder (or `image_root`).

Text normalisation. MMEB-train strings carry Phi-3-V's image placeholder and
layout (``"<|image_1|>\\nFind a caption ... \\n"``); the reference trainer swaps
the placeholder for the backbone's token and keeps the rest. Here every side is
turned into what the encoder formats at inference instead, so training and
search see identical input strings: each image placeholder (``<|image_N|>``,
``<|image_pad|>``, ``<image>``) and the whitespace after it is removed, the rest
is stripped, and the encoder's formatting (`mmsearch.encoders.format_input`)
puts its own image token back in front when the side has an image. So
``"<|image_1|>\\nRepresent the given image.\\n"`` with an image trains on
``"<|image_pad|> Represent the given image."`` for Qwen2-VL, exactly what
`encode(Item(text="Represent the given image.", image=...))` feeds the model.

A row is skipped, with a reason, when a side has a placeholder but no image
path (or more than one placeholder), an image file is missing, or the query or
positive is empty.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..encoders.formatting import IMAGE_TOKENS
from ..errors import InputError

COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
REQUIRED = ("qry", "pos_text")
# MMEB's numbered placeholders (<|image_1|>, ...) and every backbone's own image token
IMAGE_PLACEHOLDER = re.compile("(" + "|".join([r"<\|image_\d+\|>"] + sorted(map(re.escape, set(IMAGE_TOKENS.values()))))
                               + r")\s*")
TABLE_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Side:
    """One input of a training example: normalised text and an absolute image path.
    Equal sides are the same candidate (used to exclude positives from negatives)."""

    text: Optional[str]
    image: Optional[str]


@dataclass(frozen=True)
class Example:
    query: Side
    positive: Side
    negative: Optional[Side] = None
    dataset: str = ""   # the row's `dataset` column, else its table (groups per-dataset batches)
    table: str = ""     # the table it was read from


@dataclass
class TrainData:
    examples: List[Example]
    skipped: Counter = field(default_factory=Counter)   # reason -> rows
    rejected: List[dict] = field(default_factory=list)  # {"source", "row", "reason"}, all of them

    def candidates(self) -> List[Side]:
        """Every distinct positive and data negative, in first-seen order (the mining pool)."""
        pool: Dict[Side, None] = {}
        for ex in self.examples:
            pool.setdefault(ex.positive)
            if ex.negative is not None:
                pool.setdefault(ex.negative)
        return list(pool)

    def texts(self) -> Iterator[str]:
        for ex in self.examples:
            for side in (ex.query, ex.positive, ex.negative):
                if side is not None and side.text:
                    yield side.text


class BadRow(ValueError):
    """A row that cannot be trained on: `kind` (counted) and the full reason (listed)."""

    def __init__(self, kind: str, detail: str = ""):
        self.kind = kind
        super().__init__(f"{kind}: {detail}" if detail else kind)


def normalise_text(text, has_image: bool, column: str) -> Optional[str]:
    """The text of one side as the encoder formats it (see the module docstring)."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise BadRow("text is not a string", f"{column} is a {type(text).__name__}")
    placeholders = len(IMAGE_PLACEHOLDER.findall(text))
    if placeholders > 1:
        raise BadRow("several image placeholders", f"{column} has {placeholders}; one image per input is supported")
    if placeholders and not has_image:
        raise BadRow("image placeholder without an image path", column)
    return IMAGE_PLACEHOLDER.sub("", text).strip() or None


def _image_path(value, root: Path, column: str) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRow("image path is not a string", f"{column} is a {type(value).__name__}")
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise BadRow("image file not found", f"{column} {value!r} -> {path}")
    return str(path.resolve())


def _side(row: dict, text_col: str, image_col: str, root: Path) -> Optional[Side]:
    image = _image_path(row.get(image_col), root, image_col)
    text = normalise_text(row.get(text_col), image is not None, text_col)
    return None if text is None and image is None else Side(text, image)


def parse_row(row: dict, root: Path, negatives: bool = True, table: str = "") -> Example:
    """One MMEB-train row -> Example, or BadRow with the reason."""
    query = _side(row, "qry", "qry_image_path", root)
    positive = _side(row, "pos_text", "pos_image_path", root)
    if query is None:
        raise BadRow("empty query", "no qry text and no qry_image_path")
    if positive is None:
        raise BadRow("empty positive", "no pos_text and no pos_image_path")
    negative = _side(row, "neg_text", "neg_image_path", root) if negatives else None
    return Example(query, positive, negative if negative != positive else None, str(row.get("dataset") or table),
                   table)


def _rows(path: Path) -> Iterator[Tuple[int, object]]:
    """(1-based row number, row) of a JSONL or Parquet table; unparsable JSON lines yield a BadRow."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; an MMEB-train table has {', '.join(COLUMNS)} "
                             f"(columns found: {', '.join(table.column_names)})")
        wanted = [c for c in COLUMNS + ("dataset",) if c in table.column_names]
        yield from enumerate(table.select(wanted).to_pylist(), start=1)
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                yield n, BadRow("invalid JSON", str(e))
                continue
            yield n, row if isinstance(row, dict) else BadRow("not a JSON object", type(row).__name__)


def _check_table(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"training data {str(path)!r} does not exist")
    if path.suffix not in TABLE_SUFFIXES:
        raise InputError(f"training data {str(path)!r}: unsupported file type {path.suffix!r}; "
                         f"expected {' or '.join(TABLE_SUFFIXES)} in the MMEB-train layout")


def read_train_data(paths: Sequence[str], image_root: Optional[str] = None, negatives: bool = True) -> TrainData:
    """Read MMEB-train tables; bad rows are counted and listed, not fatal."""
    data = TrainData(examples=[])
    for p in paths:
        path = Path(p)
        _check_table(path)
        root = Path(image_root) if image_root else path.parent
        for n, row in _rows(path):
            try:
                if isinstance(row, BadRow):
                    raise row
                missing = [c for c in REQUIRED if c not in row]
                if missing:
                    raise BadRow("missing fields", ", ".join(missing))
                data.examples.append(parse_row(row, root, negatives, table=str(path)))
            except BadRow as e:
                data.skipped[e.kind] += 1
                data.rejected.append({"source": str(path), "row": n, "reason": str(e)})
    if not data.examples:
        raise InputError(f"no usable training rows in {', '.join(paths)} ({sum(data.skipped.values())} skipped: "
                         f"{dict(data.skipped)})")
    return data
