"""What every source yields (`Record`) and the small helpers the readers share."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Iterator, Optional, Protocol, runtime_checkable

from mmsearch.types import Item


@dataclass(frozen=True)
class Record:
    """One raw entry of a source: an `Item`, or the reason it was rejected.

    `where` says where the entry came from, for errors.jsonl and humans:
    ``"data/m.jsonl:12"`` (1-based line), ``"data/t.parquet:7"`` (1-based row),
    ``"docs/a.pdf#p3"``, ``"imgs/x.jpg"``, ``"shard-000.tar:key"``, or the bare
    path when the whole file is unreadable.
    """

    item: Optional[Item]
    where: str
    error: Optional[str] = None
    id: Optional[str] = None  # of a rejected entry, when it got as far as having one

    @property
    def ok(self) -> bool:
        return self.item is not None


@runtime_checkable
class Source(Protocol):
    """A lazily read collection of records. Iterating twice reads the input twice."""

    def __iter__(self) -> Iterator[Record]: ...

    def describe(self) -> str: ...


class Rejected(ValueError):
    """Raised inside a reader for one bad entry; turned into a rejected `Record`."""


def reject(where: str, reason: str, item_id: Optional[str] = None) -> Record:
    return Record(item=None, where=where, error=reason, id=item_id)


def display(path: str | os.PathLike) -> str:
    """The path as the user gave it, with forward slashes, for `where` strings."""
    return PurePath(os.fspath(path)).as_posix()


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def clean_text(value: Any, field: str) -> Optional[str]:
    """A text field: a string, or None for missing/blank. Anything else is rejected."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Rejected(f"{field} must be a string, got {type_name(value)} {value!r:.40}")
    return value if value.strip() else None


def clean_id(value: Any, field: str) -> str:
    """An id field: a non-empty string, or an integer (turned into its decimal string)."""
    if value is None or value == "":
        raise Rejected(f"missing id (field {field!r})")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Rejected(f"id field {field!r} must be a string or an integer, got {type_name(value)} {value!r:.40}")
    return str(value)


def resolve_path(value: str, base_dir: str) -> str:
    """An image path relative to `base_dir` made absolute; absolute paths and URLs stay as they are."""
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.abspath(os.path.join(base_dir, value))


def make_item(item_id: str, text: Optional[str], image: Any, metadata: dict, what: str = "entry") -> Item:
    """Build an Item, rejecting one with neither text nor image."""
    if text is None and image is None:
        raise Rejected(f"empty {what}: no text and no image")
    return Item(id=item_id, text=text, image=image, metadata=metadata)
