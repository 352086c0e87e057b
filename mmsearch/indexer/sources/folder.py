"""Image folders, walked recursively in a deterministic order.

An image ``a/x.jpg`` may have sidecars with the same stem: ``a/x.txt`` (its caption,
the item's text) and ``a/x.json`` (an object, the item's metadata). Ids are paths
relative to the folder with forward slashes. Hidden files and folders (name starting
with ".") are skipped. With ``pdfs=True``, PDFs in the folder are indexed too, one item
per page (ids ``"a/doc.pdf#p3"``).
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

from mmsearch.errors import InputError
from mmsearch.types import Item

from .base import Record, Rejected, display, reject
from .pdf import DEFAULT_DPI, PdfSource, check_dpi

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def walk(root: str, rel: str = "",
         ancestors: frozenset = frozenset()) -> Iterator[Tuple[str, frozenset, Optional[str]]]:
    """(relative file path, names of the files beside it, None) for each file under `root`,
    sorted by path components; (relative folder, empty, reason) for a folder that cannot be listed.

    Symbolic links are followed; a link back to an enclosing folder is not.
    """
    folder = os.path.join(root, rel) if rel else root
    real = os.path.realpath(folder)
    if real in ancestors:
        return
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        yield rel, frozenset(), f"cannot list folder: {exc}"
        return
    files = frozenset(e.name for e in entries if _is_file(e))
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        if entry.name in files:
            yield child, files, None
        elif _is_dir(entry):
            yield from walk(root, child, ancestors | {real})


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


@dataclass(frozen=True)
class FolderSource:
    """A folder of images with optional ``.txt``/``.json`` sidecars."""

    path: str
    pdfs: bool = False  # also index the PDFs found, page by page
    dpi: float = DEFAULT_DPI  # for those PDFs

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.pdfs, bool):
            raise InputError(f"pdfs={self.pdfs!r}: expected True or False")
        check_dpi(self.dpi)

    def describe(self) -> str:
        extra = f", PDFs at {self.dpi} dpi" if self.pdfs else ""
        return f"image folder {display(self.path)} (recursive, .txt/.json sidecars{extra})"

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def records(self, span: Optional[tuple] = None) -> Iterator[Record]:
        """The records of walk entries [start, stop) when `span` = (start, stop), or of all."""
        entries = walk(self.path)
        if span is not None:
            entries = itertools.islice(entries, span[0], span[1])
        for rel, siblings, error in entries:
            full = os.path.join(self.path, rel)
            if error is not None:
                yield reject(display(full), error)
                continue
            ext = os.path.splitext(rel)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                yield self._image_record(rel, full, siblings)
            elif ext == ".pdf" and self.pdfs:
                yield from PdfSource(full, dpi=self.dpi, name=rel)

    def _image_record(self, rel: str, full: str, siblings: frozenset) -> Record:
        where = display(full)
        stem = os.path.splitext(full)[0]
        base = os.path.basename(stem)
        try:
            text = _caption(stem + ".txt") if base + ".txt" in siblings else None
            metadata = _sidecar_json(stem + ".json") if base + ".json" in siblings else {}
        except Rejected as exc:
            return reject(where, str(exc), rel)
        return Record(Item(id=rel, text=text, image=os.path.abspath(full), metadata=metadata), where)


def _caption(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise Rejected(f"sidecar {os.path.basename(path)} is not valid UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise Rejected(f"cannot read sidecar {os.path.basename(path)}: {exc}") from None
    return text or None


def _sidecar_json(path: str) -> dict:
    name = os.path.basename(path)
    try:
        with open(path, "rb") as fh:
            value = json.loads(fh.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(f"bad sidecar {name}: {exc}") from None
    except OSError as exc:
        raise Rejected(f"cannot read sidecar {name}: {exc}") from None
    if not isinstance(value, dict):
        raise Rejected(f"bad sidecar {name}: a JSON {type(value).__name__}, expected an object")
    return value
