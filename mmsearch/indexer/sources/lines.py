"""Line-by-line reading of text files, decoded per line, so one bad line never kills a file."""
from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator, Optional, Tuple

from .base import type_name


def decode_line(raw: bytes, number: int) -> str:
    """One line as text; raises UnicodeDecodeError. A UTF-8 BOM on line 1 is dropped."""
    text = raw.decode("utf-8")
    return text.lstrip("\ufeff") if number == 1 else text


def utf8_reason(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"line is not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r})"


def parse_json_object(raw: bytes, number: int) -> Tuple[Optional[dict], Optional[str]]:
    """(object, None) for a good line, (None, reason) for a bad one."""
    try:
        text = decode_line(raw, number)
    except UnicodeDecodeError as exc:
        return None, utf8_reason(raw, exc)
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"broken JSON line: {exc.msg} (column {exc.colno})"
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

    A line that is not UTF-8 is passed on decoded with replacement characters and
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
        except UnicodeDecodeError as exc:
            if self.bad is None:
                self.bad = utf8_reason(raw, exc)
            return raw.decode("utf-8", "replace")
