"""webdataset shards: tar files whose members are grouped into samples by key.

The key of ``dir/0001.jpg`` or ``dir/0001.meta.json`` is ``dir/0001`` (the path up to
the first dot of the base name), the rest is the member's suffix, as in webdataset.
A sample's members are consecutive in the tar. Its image is the first of the
``jpg``/``jpeg``/``png``/``webp`` members (bytes, decoded later), its text the ``txt``
or ``caption`` member, its metadata the ``json`` member (an object).
"""
from __future__ import annotations

import json
import lzma
import os
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

from .base import Record, Rejected, clean_id, display, make_item, reject

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
TEXT_SUFFIXES = ("txt", "caption")
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def split_key(name: str) -> Tuple[Optional[str], Optional[str]]:
    """(key, lower-case suffix) of a member name; (None, None) for names without a suffix or hidden."""
    folder, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None, None
    stem, suffix = base.split(".", 1)
    return posixpath.join(folder, stem), suffix.lower()


class _TarInfo(tarfile.TarInfo):
    """Remembers on its tar why the last header could not be read."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.header_error = exc
            raise


class _StrictTar(tarfile.TarFile):
    """A TarFile that tells a clean end from a truncated or garbled one.

    The stdlib ends the member list silently at a torn or invalid header after the
    first member; `bad_ending` says when that happened.
    """

    tarinfo = _TarInfo
    header_error: Optional[Exception] = None

    def bad_ending(self) -> Optional[str]:
        if isinstance(self.header_error, tarfile.TruncatedHeaderError):
            return "the archive ends in the middle of a member header (truncated)"
        if isinstance(self.header_error, tarfile.InvalidHeaderError):
            return f"invalid member header ({self.header_error})"
        return None  # end-of-archive blocks, or the file ends at a member boundary


class _CorruptTar(Exception):
    def __init__(self, key: Optional[str], reason: str):
        super().__init__(reason)
        self.key, self.reason = key, reason


def _samples(path: str) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """(key, {suffix: bytes}) for each sample of a tar, in order.

    Raises _CorruptTar naming the sample being read when the tar turns out broken;
    that sample may be incomplete, so it is not yielded.
    """
    key, parts = None, {}
    try:
        with _StrictTar.open(path, "r|*") as tar:
            for member in tar:
                name_key, suffix = split_key(member.name) if member.isfile() else (None, None)
                if name_key is None:
                    continue
                if name_key != key:
                    if key is not None:
                        yield key, parts
                    key, parts = name_key, {}
                parts[suffix] = tar.extractfile(member).read()
            problem = tar.bad_ending()
    except _TAR_ERRORS as exc:
        problem = f"{type(exc).__name__}: {exc}"
    except (TypeError, ValueError) as exc:  # how tarfile fails on some torn gzip streams
        problem = f"truncated or corrupt compressed stream ({exc})"
    if problem is not None:
        raise _CorruptTar(key, problem)
    if key is not None:
        yield key, parts


@dataclass(frozen=True)
class WebDatasetSource:
    """A webdataset ``.tar`` shard (compressed tars too), read as a stream."""

    path: str
    id_field: Optional[str] = None  # take the id from this field of the json member

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))

    def describe(self) -> str:
        ids = f"json field {self.id_field!r}" if self.id_field else "sample keys"
        return f"webdataset shard {display(self.path)} (ids from {ids})"

    def __iter__(self) -> Iterator[Record]:
        where0 = display(self.path)
        samples = _samples(self.path)
        while True:
            try:
                key, parts = next(samples)
            except StopIteration:
                return
            except _CorruptTar as exc:
                where = f"{where0}:{exc.key}" if exc.key is not None else where0
                # the sample being read when the tar broke is lost; with key ids, its key is its id
                item_id = exc.key if self.id_field is None else None
                yield reject(where, f"corrupt tar, stopped reading it here: {exc.reason}", item_id)
                return
            yield self._record(where0, key, parts)

    def _record(self, where0: str, key: str, parts: Dict[str, bytes]) -> Record:
        where = f"{where0}:{key}"
        item_id = key if self.id_field is None else None
        try:
            metadata = _json_member(parts)
            if self.id_field is not None:
                item_id = clean_id(metadata.pop(self.id_field, None), f"json {self.id_field}")
            text = _text_member(parts)
            image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
            if image is not None and not image:
                raise Rejected("the image member is empty (0 bytes)")
            if text is None and image is None:
                raise Rejected(f"empty sample: no text and no image (members: {', '.join(sorted(parts))})")
            return Record(make_item(item_id, text, image, metadata, what="sample"), where)
        except Rejected as exc:
            return reject(where, str(exc), item_id)


def _json_member(parts: Dict[str, bytes]) -> dict:
    if "json" not in parts:
        return {}
    try:
        value = json.loads(parts["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(f"broken json member: {exc}") from None
    if not isinstance(value, dict):
        raise Rejected(f"the json member is a {type(value).__name__}, not an object")
    return value


def _text_member(parts: Dict[str, bytes]) -> Optional[str]:
    for suffix in TEXT_SUFFIXES:
        if suffix in parts:
            try:
                text = parts[suffix].decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise Rejected(f"the {suffix} member is not valid UTF-8 (byte {exc.start})") from None
            return text or None
    return None
