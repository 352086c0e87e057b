"""Line-by-line reading of text files, decoded per line, so one bad line never kills a file."""
from __future__ import annotations

import json
import re
from typing import Any, BinaryIO, Iterator, List, Optional, Tuple

from .base import type_name

MAX_BAD_SPANS = 3  # bad byte runs named in a reason


class BadLine(str):
    """The reason a line was rejected (a str), with what could still be read of it, so
    that the source can name the item: `row`, the object parsed from the line decoded
    with ``surrogateescape`` (bad bytes become lone surrogates), or `text`, that
    decoded line when it is not a JSON object."""

    row: Optional[dict] = None
    text: Optional[str] = None

    @classmethod
    def of(cls, reason: str, row: Optional[dict] = None, text: Optional[str] = None) -> "BadLine":
        bad = cls(reason)
        bad.row, bad.text = row, text
        return bad


def escaped(raw: bytes) -> str:
    """Bytes as ``\\xff`` escapes, the way they are shown in reasons."""
    return "".join(f"\\x{b:02x}" for b in raw)


def bad_utf8_spans(raw: bytes) -> List[Tuple[int, bytes]]:
    """(0-based byte offset, bytes) of each run of bytes that is not valid UTF-8."""
    spans: List[Tuple[int, bytes]] = []
    pos = 0
    while pos < len(raw):
        try:
            raw[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            start, end = pos + exc.start, pos + exc.end
            if spans and spans[-1][0] + len(spans[-1][1]) == start:  # adjacent: one run
                spans[-1] = (spans[-1][0], spans[-1][1] + raw[start:end])
            else:
                spans.append((start, raw[start:end]))
            pos = end
    return spans


def describe_bad_utf8(raw: bytes) -> str:
    """E.g. ``\\xe9 at byte 33`` (0-based offsets in the line), at most MAX_BAD_SPANS runs."""
    spans = bad_utf8_spans(raw)
    parts = [f"{escaped(b)} at byte {start}" for start, b in spans[:MAX_BAD_SPANS]]
    if len(spans) > MAX_BAD_SPANS:
        parts.append(f"and {len(spans) - MAX_BAD_SPANS} more")
    return ", ".join(parts)


def clean_salvaged_id(value: Any) -> Optional[str]:
    """An id read from a bad line when it is trustworthy: a non-empty string without
    undecodable bytes, or an integer; else None."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    text = str(value)
    return None if any("\udc80" <= ch <= "\udcff" for ch in text) else text


def show_salvaged(value: Any) -> str:
    """A value read with surrogateescape, its bad bytes shown escaped: 'caf\\xe9'."""
    if isinstance(value, str):
        return "'" + value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") + "'"
    return repr(value)


def salvage_id(error: Any, field: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(the id in field `field` of a rejected line, or None; a note when the field is
    there but not clean). Reads the parsed object when the line parsed, else the text,
    when exactly one ``"field": value`` pair in it has a string or integer value."""
    if field is None or not isinstance(error, BadLine):
        return None, None
    if error.row is not None:
        if field not in error.row:
            return None, None
        value = error.row[field]
    elif error.text is not None:
        pattern = re.compile(r'"%s"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)\s*[,}]' % re.escape(field))
        found = pattern.findall(error.text)
        if len(found) != 1:
            return None, None
        try:
            value = json.loads(found[0])
        except ValueError:
            return None, None
    else:
        return None, None
    item_id = clean_salvaged_id(value)
    if item_id is None and value is not None:
        return None, f"its {field!r} field reads {show_salvaged(value)}"
    return item_id, None


def decode_line(raw: bytes, number: int) -> str:
    """One line as text; raises UnicodeDecodeError. A UTF-8 BOM on line 1 is dropped."""
    text = raw.decode("utf-8")
    return text.lstrip("\ufeff") if number == 1 else text


def utf8_reason(raw: bytes, exc: Optional[UnicodeDecodeError] = None) -> str:
    """Why a line is rejected for its encoding, naming the bad bytes escaped and where."""
    return f"line is not valid UTF-8: {describe_bad_utf8(raw)} (0-based byte offsets in the line)"


def parse_json_object(raw: bytes, number: int) -> Tuple[Optional[dict], Optional[str]]:
    """(object, None) for a good line, (None, reason) for a bad one. The reason is a
    `BadLine` carrying what could still be read (see `salvage_id`)."""
    try:
        text = decode_line(raw, number)
    except UnicodeDecodeError:
        loose = raw.decode("utf-8", "surrogateescape")
        if number == 1:
            loose = loose.lstrip("\ufeff")
        try:
            row = json.loads(loose)
        except ValueError:
            row = None
        return None, BadLine.of(utf8_reason(raw), row if isinstance(row, dict) else None,
                                None if isinstance(row, dict) else loose)
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, BadLine.of(f"broken JSON line: {exc.msg} (column {exc.colno})", text=text)
    if not isinstance(value, dict):
        kind = {"list": "array", "str": "string", "NoneType": "null"}.get(type(value).__name__, type_name(value))
        return None, f"line is a JSON {kind}, not an object"
    return value, None


def json_objects(path: str, span: Optional[Tuple[int, Optional[int], int]] = None
                 ) -> Iterator[Tuple[int, Optional[dict], Optional[str]]]:
    """(line number, object, None) or (line number, None, reason) for each non-blank line.

    Line numbers are 1-based; line 0 stands for the whole file (it could not be read).
    `span` = (start byte, stop byte or None, number of the line at start) reads only
    the lines that start in [start, stop); start must be the beginning of a line.
    """
    start, stop, first = span or (0, None, 1)
    number, pos = first - 1, start
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            for raw in fh:
                if stop is not None and pos >= stop:
                    break
                pos += len(raw)
                number += 1
                if raw.strip():
                    yield (number, *parse_json_object(raw, number))
    except OSError as exc:
        after = f" after line {number}" if number else ""
        yield 0, None, f"cannot read{after}: {exc}"


def line_starts(path: str, every: int) -> Iterator[Tuple[int, int]]:
    """(byte offset, 1-based line number) of line 1 and of every `every`-th line after it."""
    pos = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if (number - 1) % every == 0:
                yield pos, number
            pos += len(raw)


class DecodedLines:
    """Iterator of the decoded lines of a binary file, for `csv.reader`.

    A line that is not UTF-8 is passed on decoded with ``surrogateescape`` (each bad
    byte a lone surrogate, so the row's clean fields, its id, can still be read) and
    remembered in `bad`, so the caller can reject the row that contains it.
    """

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self.count = 0  # lines read so far
        self.bad: Optional[str] = None

    def __iter__(self) -> "DecodedLines":
        return self

    def __next__(self) -> str:
        raw = next(self._fh)
        self.count += 1
        try:
            return decode_line(raw, self.count)
        except UnicodeDecodeError:
            if self.bad is None:
                self.bad = utf8_reason(raw)
            return raw.decode("utf-8", "surrogateescape")
