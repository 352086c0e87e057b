"""The metadata table of a shard (``meta.arrow``): `id`, `modality`, `text`, `image`
(strings, in that order), then the items' metadata columns; row i is global row
``id_start + i``."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import IndexFormatError, InputError

from .manifest import FORMAT_VERSION

META_COLUMNS = ("id", "modality", "text", "image")


def build_meta_table(ids: Sequence[str], modalities: Sequence[str], texts: Sequence[Optional[str]],
                     images: Sequence[Optional[str]],
                     metadata: Optional[Sequence[Mapping]] = None) -> pa.Table:
    """A meta table in the shard layout; metadata dicts become columns (first-seen order)."""
    columns = dict(zip(META_COLUMNS, (ids, modalities, texts, images)))
    metadata = list(metadata) if metadata is not None else [{}] * len(ids)
    lengths = {name: len(v) for name, v in columns.items()} | {"metadata": len(metadata)}
    if len(set(lengths.values())) > 1:
        raise InputError(f"meta columns differ in length: {lengths}")
    keys = list(dict.fromkeys(k for m in metadata for k in m))
    clash = [k for k in keys if k in META_COLUMNS]
    if clash:
        raise InputError(f"metadata keys {clash} clash with the reserved columns {META_COLUMNS}")
    arrays = {}
    for name, values in list(columns.items()) + [(k, [m.get(k) for m in metadata]) for k in keys]:
        try:
            arrays[name] = pa.array(values, type=pa.string() if name in META_COLUMNS else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InputError(f"meta column {name!r}: cannot store its values in Arrow: {e}") from e
    return pa.table(arrays)


def canonical_meta(table: Union[pa.Table, pa.RecordBatch], name: str, id_start: int,
                   rows: int) -> pa.Table:
    """The meta table in canonical form (reserved columns first, as utf8) or an error."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise TypeError(f"write_shard {name}: meta_table must be a pyarrow Table, "
                        f"got {type(table).__name__}")
    names = table.column_names
    missing = [c for c in META_COLUMNS if c not in names]
    if missing or len(set(names)) != len(names):
        raise IndexFormatError(f"write_shard {name}: meta columns {names} must be unique and include "
                               f"{list(META_COLUMNS)} (build it with build_meta_table)")
    if table.num_rows != rows:
        raise IndexFormatError(f"write_shard {name}: meta table has {table.num_rows} rows, "
                               f"ids have {rows}")
    cols = []
    for c in META_COLUMNS:
        col = table.column(c)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                or pa.types.is_null(col.type)):
            raise IndexFormatError(f"write_shard {name}: column {c!r} must hold strings, got {col.type}")
        cols.append(col.cast(pa.string()))
    problem = meta_id_problem(cols[0])
    if problem:
        raise IndexFormatError(f"write_shard {name}: {problem}")
    others = [c for c in names if c not in META_COLUMNS]
    out = pa.table(cols + [table.column(c) for c in others], names=list(META_COLUMNS) + others)
    tags = {b"mmsearch.format_version": str(FORMAT_VERSION).encode(), b"mmsearch.shard": name.encode(),
            b"mmsearch.id_start": str(id_start).encode()}
    return out.replace_schema_metadata({**(table.schema.metadata or {}), **tags})


def meta_id_problem(ids: pa.ChunkedArray) -> Optional[str]:
    """Why these item ids are not unique non-null strings, or None."""
    if ids.null_count:
        return f"meta column 'id' has {ids.null_count} null values"
    counts = pc.value_counts(ids)
    dupes = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dupes):
        return f"meta column 'id' repeats {len(dupes)} ids, e.g. {dupes[0]['values'].as_py()!r}"
    return None
