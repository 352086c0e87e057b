"""Choosing a source from what a path is, and chaining several sources."""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Dict, Iterable, Iterator, Optional, Union

from mmsearch.errors import InputError

from .base import Record, Source
from .folder import FolderSource
from .manifest import CsvSource, JsonlSource, ParquetSource
from .mbeir import MBeirSource, is_mbeir_pool
from .pdf import PdfSource
from .webdataset import WebDatasetSource

KINDS: Dict[str, type] = {
    "folder": FolderSource,
    "jsonl": JsonlSource,
    "csv": CsvSource,
    "parquet": ParquetSource,
    "mbeir": MBeirSource,
    "pdf": PdfSource,
    "webdataset": WebDatasetSource,
}

# File name endings and the kind they select (longest ending first wins).
EXTENSIONS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet",
    ".pdf": "pdf",
    ".tar": "webdataset", ".tar.gz": "webdataset", ".tgz": "webdataset",
}

PathLike = Union[str, os.PathLike]


def detect_kind(path: PathLike) -> str:
    """The source kind of an existing path: a folder, or by its file name ending."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"source {path!r} does not exist")
    if os.path.isdir(path):
        return "folder"
    if is_mbeir_pool(path):
        return "mbeir"
    lower = path.lower()
    for ending in sorted(EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ending):
            return EXTENSIONS[ending]
    raise InputError(
        f"cannot tell what kind of source {path!r} is from its name: expected a folder or a file ending in "
        f"{', '.join(EXTENSIONS)}; or give the source kind: one of {', '.join(KINDS)}")


def options_of(kind: str) -> tuple:
    """The option names a source kind accepts."""
    return tuple(f.name for f in dataclasses.fields(KINDS[kind]) if f.name != "path")


def checked_kind(path: str, kind: Optional[str]) -> str:
    """The checked kind of an existing path."""
    if not os.path.exists(path):
        raise InputError(f"source {path!r} does not exist")
    if kind is None:
        kind = detect_kind(path)
    if kind not in KINDS:
        raise InputError(f"unknown source kind {kind!r} for {path!r}; valid kinds: {', '.join(KINDS)}")
    if (kind == "folder") != os.path.isdir(path):
        what = "a folder" if kind == "folder" else "a file"
        raise InputError(f"source {path!r}: kind {kind!r} expects {what}")
    return kind


def open_source(path: PathLike, kind: Optional[str] = None, **options) -> Source:
    """A source reading `path`, of the given kind or detected from the path.

    Raises InputError for a missing path, an unknown kind or extension, an option the
    kind does not take, or a bad option value. Nothing is read until iteration.
    """
    path = os.fspath(path)
    kind = checked_kind(path, kind)
    unknown = sorted(set(options) - set(options_of(kind)))
    if unknown:
        raise InputError(f"{kind} source {path!r}: unknown option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(options_of(kind)) or 'none'}")
    return KINDS[kind](path, **options)


def iter_sources(paths: Union[PathLike, Iterable[PathLike]], kind: Optional[str] = None,
                 **options) -> Iterator[Record]:
    """The records of several sources, one after the other.

    Every source is opened (checked) before the first record is read. Each source
    receives the options its kind accepts; an option no kind accepts is an error.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    known = {name for k in KINDS for name in options_of(k)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown source option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    sources = []
    for path in map(os.fspath, paths):
        chosen = checked_kind(path, kind)
        accepted = set(options_of(chosen))
        sources.append(open_source(path, chosen, **{k: v for k, v in options.items() if k in accepted}))
    return itertools.chain.from_iterable(sources)
