"""Manifest sources: JSON lines, CSV/TSV and Parquet tables of (id, text, image, metadata...).

Columns are configurable (`id_column`, `text_column`, `image_column`). An image value is
a path relative to the manifest's folder (made absolute; absolute paths and URLs are
kept), raw bytes (a Parquet binary column), or an object ``{"bytes": ..., "path": ...}``
as Hugging Face datasets store images (in JSON lines, "bytes" is base64 text). Every
other column becomes metadata, with its JSON/Arrow type kept (CSV values stay strings,
empty cells become None). With ``id_column=None`` ids are ``"<file name>:<n>"``, n being
the 1-based line (JSON lines, CSV) or row (Parquet), the same n as in `Record.where`.
"""
from __future__ import annotations

import base64
import binascii
import csv
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from mmsearch.errors import InputError

from .base import Record, Rejected, clean_id, clean_text, display, make_item, reject, resolve_path, type_name
from .lines import DecodedLines, clean_salvaged_id, json_objects, salvage_id, show_salvaged


@dataclass(frozen=True)
class _Manifest:
    """The options and row handling shared by the manifest sources."""

    path: str
    id_column: Optional[str] = "id"
    text_column: Optional[str] = "text"
    image_column: Optional[str] = "image"
    metadata_columns: Optional[Sequence[str]] = None  # None: every other column

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        for name in ("id_column", "text_column", "image_column"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InputError(f"{name}={value!r}: expected a column name or None")
        if self.metadata_columns is not None:
            if isinstance(self.metadata_columns, str) or not all(isinstance(c, str) for c in self.metadata_columns):
                raise InputError(f"metadata_columns={self.metadata_columns!r}: expected a list of column names")
            object.__setattr__(self, "metadata_columns", tuple(self.metadata_columns))

    def _describe(self, what: str) -> str:
        return (f"{what} {display(self.path)} (id={self.id_column!r}, text={self.text_column!r}, "
                f"image={self.image_column!r})")

    @property
    def _reserved(self) -> set:
        return {c for c in (self.id_column, self.text_column, self.image_column) if c is not None}

    def _check_columns(self, names: Sequence[str]) -> Optional[str]:
        """Why a table with these columns cannot be read, or None."""
        listing = ", ".join(map(str, names))
        dupes = sorted({n for n in names if list(names).count(n) > 1})
        if dupes:
            return f"duplicate column names {dupes}"
        if self.id_column is not None and self.id_column not in names:
            return f"no id column {self.id_column!r} (columns: {listing}); pass id_column=None to number the rows"
        if not ({self.text_column, self.image_column} & set(names)):
            return (f"neither a text column {self.text_column!r} nor an image column {self.image_column!r} "
                    f"(columns: {listing})")
        missing = [c for c in self.metadata_columns or () if c not in names]
        if missing:
            return f"metadata columns {missing} not found (columns: {listing})"
        return None

    def _record(self, row: dict, where: str, default_id: str, base64_bytes: bool = False) -> Record:
        """Turn one row (column -> value) into a Record."""
        item_id = None
        try:
            if self.id_column is None:
                item_id = default_id
            else:
                item_id = clean_id(row.get(self.id_column), self.id_column)
            text = clean_text(row.get(self.text_column), f"text field {self.text_column!r}")
            image = self._image(row.get(self.image_column), base64_bytes)
            keep, reserved = self.metadata_columns, self._reserved
            metadata = {k: v for k, v in row.items() if k not in reserved and (keep is None or k in keep)}
            return Record(make_item(item_id, text, image, metadata), where)
        except Rejected as exc:
            return reject(where, str(exc), item_id)

    def _rejected_line(self, where: str, error: str, default_id: Optional[str]) -> Record:
        """A line that could not be read as a row, with the best id that can be read from it."""
        if self.id_column is None:
            return reject(where, error, default_id)
        item_id, note = salvage_id(error, self.id_column)
        return reject(where, error if note is None else f"{error}; {note}", item_id)

    def _salvage_fields(self, header: Optional[list], fields: Optional[list], default_id: str):
        """(id, note) of a rejected CSV row: its id column when the row's fields can be
        trusted to line up with the header (as many fields, or the id is the first column)."""
        if self.id_column is None:
            return default_id, None
        if not header or not fields or self.id_column not in header:
            return None, None
        at = header.index(self.id_column)
        if at >= len(fields) or (len(fields) != len(header) and at != 0):
            return None, None
        value = fields[at]
        item_id = clean_salvaged_id(value)
        if item_id is None and value:
            return None, f"its {self.id_column!r} field reads {show_salvaged(value)}"
        return item_id, None

    def _image(self, value: Any, base64_bytes: bool) -> Any:
        """An image value as an absolute path string, bytes, or None."""
        field = f"image field {self.image_column!r}"
        if isinstance(value, dict):
            if "bytes" not in value and "path" not in value:
                raise Rejected(f"{field}: an image object needs 'bytes' or 'path', got keys {sorted(value)}")
            if value.get("bytes") is not None:
                return _image_bytes(value["bytes"], field, base64_bytes)
            value = value.get("path")
        if value is None:
            return None
        if isinstance(value, str):
            base = os.path.dirname(os.path.abspath(self.path))
            return resolve_path(value, base) if value.strip() else None
        if isinstance(value, (bytes, bytearray)) and not base64_bytes:
            return _image_bytes(value, field, False)
        raise Rejected(f"{field} must be a path string, bytes or {{'bytes': ...}}, got {type_name(value)}")


def _image_bytes(value: Any, field: str, base64_text: bool) -> bytes:
    if base64_text:
        if not isinstance(value, str):
            raise Rejected(f"{field}: 'bytes' must be base64 text, got {type_name(value)}")
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Rejected(f"{field}: 'bytes' is not valid base64 ({exc})") from None
    if not isinstance(value, (bytes, bytearray)):
        raise Rejected(f"{field}: 'bytes' must be binary, got {type_name(value)}")
    if not value:
        raise Rejected(f"{field}: the image bytes are empty")
    return bytes(value)


@dataclass(frozen=True)
class JsonlSource(_Manifest):
    """A JSON-lines manifest: one object per line; blank lines are skipped."""

    def describe(self) -> str:
        return self._describe("JSON-lines manifest")

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def records(self, span: Optional[tuple] = None) -> Iterator[Record]:
        """The records of the lines in `span` (see `lines.json_objects`), or of the whole file."""
        where0, name = display(self.path), os.path.basename(self.path)
        for number, row, error in json_objects(self.path, span):
            where = f"{where0}:{number}" if number else where0
            if error is not None:
                yield self._rejected_line(where, error, f"{name}:{number}" if number else None)
            else:
                yield self._record(row, where, f"{name}:{number}", base64_bytes=True)


@dataclass(frozen=True)
class CsvSource(_Manifest):
    """A CSV (or, for ``.tsv``, tab-separated) manifest with a header row."""

    delimiter: Optional[str] = None  # None: tab for .tsv, comma otherwise

    def describe(self) -> str:
        return self._describe("CSV manifest")

    def __iter__(self) -> Iterator[Record]:
        where0 = display(self.path)
        try:
            fh = open(self.path, "rb")
        except OSError as exc:
            yield reject(where0, f"cannot read: {exc}")
            return
        with fh:
            try:
                yield from self._rows(DecodedLines(fh), where0)
            except OSError as exc:
                yield reject(where0, f"cannot read: {exc}")

    def _rows(self, lines: DecodedLines, where0: str) -> Iterator[Record]:
        delimiter = self.delimiter or ("\t" if self.path.lower().endswith(".tsv") else ",")
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            header, lines.bad = None, f"broken CSV header: {exc}"
        problem = lines.bad or (None if header is None else self._check_columns(header))
        if problem:
            yield reject(f"{where0}:1", f"header: {problem}")
            return
        name = os.path.basename(self.path)
        while True:
            start = lines.count + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                fields, lines.bad = None, lines.bad or f"broken CSV row: {exc}"
            where = f"{where0}:{start}"
            if lines.bad is not None:
                item_id, note = self._salvage_fields(header, fields, f"{name}:{start}")
                yield reject(where, lines.bad if note is None else f"{lines.bad}; {note}", item_id)
                lines.bad = None
            elif fields:  # csv gives [] for a blank line
                yield self._csv_record(header, fields, where, f"{name}:{start}")

    def _csv_record(self, header: list, fields: list, where: str, default_id: str) -> Record:
        if len(fields) != len(header):
            item_id, _ = self._salvage_fields(header, fields, default_id)
            return reject(where, f"row has {len(fields)} fields, the header has {len(header)}", item_id)
        row = {k: (v if v != "" else None) for k, v in zip(header, fields)}
        return self._record(row, where, default_id)


@dataclass(frozen=True)
class ParquetSource(_Manifest):
    """A Parquet manifest, read in record batches of `batch_size` rows."""

    batch_size: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size!r}: expected a positive integer")

    def describe(self) -> str:
        return self._describe("Parquet manifest")

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def problem(self, table: Any) -> Optional[str]:
        """Why an open `pyarrow.parquet.ParquetFile` cannot be read as this manifest, or None."""
        schema = table.schema_arrow
        return self._check_columns(schema.names) or self._check_types(schema)

    def records(self, span: Optional[tuple] = None) -> Iterator[Record]:
        """The records of row groups [first, stop) when `span` = (first, stop, rows before
        them), or of the whole file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        where0, name = display(self.path), os.path.basename(self.path)
        try:
            table = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as exc:
            yield reject(where0, f"cannot read Parquet file: {exc}")
            return
        problem = self.problem(table)
        if problem:
            yield reject(where0, problem)
            return
        keep, schema = self.metadata_columns, table.schema_arrow
        columns = None if keep is None else [c for c in schema.names if c in self._reserved or c in keep]
        groups = None if span is None else list(range(span[0], span[1]))
        row = 0 if span is None else span[2]
        try:
            for batch in table.iter_batches(batch_size=self.batch_size, columns=columns, row_groups=groups):
                for values in batch.to_pylist():
                    row += 1
                    yield self._record(values, f"{where0}:{row}", f"{name}:{row}")
        except (OSError, pa.ArrowException) as exc:
            yield reject(f"{where0}:{row + 1}", f"cannot read rows from here on: {exc}")
        finally:
            table.close()

    def _check_types(self, schema: Any) -> Optional[str]:
        import pyarrow as pa

        if self.text_column in schema.names:
            kind = schema.field(self.text_column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
                    or str(kind) == "string_view"):
                return f"text column {self.text_column!r} has type {kind}, expected strings"
        return None
