"""A cheap count of the items a set of sources will yield, without decoding them.

Used for the progress bar's ETA and for `--index auto`, which needs the corpus
size before the first vector is encoded. Counting is approximate where a
source may reject entries (blank or broken lines still count).
"""
from __future__ import annotations

import os
import tarfile
from typing import Iterable, Optional

from .sources import detect_kind
from .sources.folder import IMAGE_EXTENSIONS
from .sources.webdataset import split_key


def _lines(path: str) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _folder(path: str) -> int:
    return sum(1 for _, _, files in os.walk(path) for f in files
               if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith("."))


def _pdf(path: str) -> int:
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(path)
    except Exception:
        return 1  # one rejection
    try:
        return len(doc)
    finally:
        doc.close()


def _tar(path: str) -> int:
    keys = set()
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                key, _ = split_key(member.name)
                if key:
                    keys.add(key)
    except (tarfile.TarError, OSError, EOFError):
        pass
    return len(keys)


def _parquet(path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return 1


def estimate_one(path: str, kind: Optional[str] = None) -> int:
    kind = kind or detect_kind(path)
    if kind in ("jsonl", "mbeir"):
        return _lines(path)
    if kind == "csv":
        return max(_lines(path) - 1, 0)
    counters = {"parquet": _parquet, "folder": _folder, "pdf": _pdf, "webdataset": _tar}
    if kind not in counters:
        from ..errors import InputError

        raise InputError(f"unknown source kind {kind!r}; valid kinds: {', '.join(['jsonl', 'mbeir', 'csv', *counters])}")
    return counters[kind](path)


def estimate_rows(paths: Iterable[str], kind: Optional[str] = None) -> int:
    return sum(estimate_one(os.fspath(p), kind) for p in paths)
