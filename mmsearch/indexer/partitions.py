"""Splitting sources into partitions: the unit of work, retry and resume of a distributed run.

A partition is a deterministic slice of one source, so the same inputs always give
the same partitions and reading them one after the other yields exactly the records
of `iter_sources`, in the same order:

    jsonl, mbeir   line ranges (byte offsets at line starts, with their line numbers)
    parquet        ranges of row groups (with the number of rows before them)
    folder         ranges of the sorted recursive walk (cut every `size` images)
    csv, pdf, tar  the whole file (CSV fields may span lines; PDFs and tars stream)

Each partition is read by the sources' own code (`records(span)`), so `where`
strings, default ids and rejections are those of a whole-file read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..errors import InputError
from .sources import Record, open_source
from .sources.factory import KINDS, checked_kind, options_of
from .sources.folder import IMAGE_EXTENSIONS, walk
from .sources.lines import line_starts

DEFAULT_PARTITION_SIZE = 10_000


@dataclass(frozen=True)
class Partition:
    index: int                   # position in read order
    path: str
    kind: str
    span: Optional[Tuple[int, ...]] = None   # source-specific; None = the whole source

    @property
    def label(self) -> str:
        where = "" if self.span is None else f"[{self.span[0]}:{self.span[1]}]"
        return f"{self.path}{where}"


def _options_for(kind: str, options: Mapping[str, Any]) -> dict:
    accepted = set(options_of(kind))
    return {k: v for k, v in options.items() if k in accepted}


def check_options(options: Mapping[str, Any]) -> None:
    known = {name for k in KINDS for name in options_of(k)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown source option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")


def plan_partitions(paths: Sequence[str], kind: Optional[str], options: Mapping[str, Any],
                    size: int = DEFAULT_PARTITION_SIZE) -> List[Partition]:
    """The partitions of `paths`, in read order, of about `size` records each.

    Every source is opened (checked) first, as `iter_sources` does: a missing path,
    an unknown kind or option raises InputError before anything is read."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"partition_size must be a positive integer, got {size!r}")
    check_options(options)
    sources = []
    for path in map(os.fspath, paths):
        chosen = checked_kind(path, kind)
        sources.append((path, chosen, open_source(path, chosen, **_options_for(chosen, options))))
    parts: List[Partition] = []
    for path, chosen, source in sources:
        for span in _spans(chosen, source, size):
            parts.append(Partition(len(parts), path, chosen, span))
    return parts


def _spans(kind: str, source, size: int) -> List[Optional[tuple]]:
    if kind in ("jsonl", "mbeir"):
        return _line_spans(source.path, size)
    if kind == "parquet":
        return _row_group_spans(source, size)
    if kind == "folder":
        return _walk_spans(source.path, size, pdfs=source.pdfs)
    return [None]


def _line_spans(path: str, size: int) -> List[Optional[tuple]]:
    try:
        starts = list(line_starts(path, size))
    except OSError:
        return [None]  # the reader reports why the file cannot be read, once
    if len(starts) <= 1:
        return [None]
    ends = [s for s, _ in starts[1:]] + [None]
    return [(start, stop, number) for (start, number), stop in zip(starts, ends)]


def _row_group_spans(source, size: int) -> List[Optional[tuple]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(source.path) as table:
            if source.problem(table):
                return [None]
            rows = [table.metadata.row_group(i).num_rows for i in range(table.metadata.num_row_groups)]
    except (OSError, pa.ArrowException):
        return [None]
    spans, first, before, count = [], 0, 0, 0
    for i, n in enumerate(rows):
        count += n
        if count >= size or i == len(rows) - 1:
            spans.append((first, i + 1, before))
            first, before, count = i + 1, before + count, 0
    return spans if len(spans) > 1 else [None]


def _walk_spans(path: str, size: int, pdfs: bool) -> List[Optional[tuple]]:
    """Cut the walk after every `size` images (PDFs count as one entry each)."""
    wanted = IMAGE_EXTENSIONS | ({".pdf"} if pdfs else set())
    spans, start, images, n = [], 0, 0, 0
    for n, (rel, _, _) in enumerate(walk(path), 1):
        images += os.path.splitext(rel)[1].lower() in wanted
        if images >= size:
            spans.append((start, n))
            start, images = n, 0
    if start < n:
        spans.append((start, None))
    elif spans:
        spans[-1] = (spans[-1][0], None)  # entries added later belong to the last partition
    return spans if len(spans) > 1 else [None]


def read_partition(part: Partition, options: Mapping[str, Any]) -> Iterator[Record]:
    """The records of one partition, read by its source's own code."""
    source = open_source(part.path, part.kind, **_options_for(part.kind, options))
    return iter(source) if part.span is None else source.records(part.span)
