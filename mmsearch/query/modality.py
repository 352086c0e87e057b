"""The `modality` column as the vocabulary of `mmsearch.types` reads it, and counts per modality.

Stored strings are kept as they were written ("text", "image", "image,text", and
"page" since pages got their own name). An index built before that stored PDF pages
as "image"; `read_pages` gives those rows (modality "image" with both the `page` and
`pages` metadata columns set: the rule the indexer used to give them the page
instruction) the modality "page" when a shard is opened. So filters, hits, item
records and counts all say "page" for a page, whatever the index's age; the files on
disk are not changed.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.types import IMAGE, ITEM_MODALITIES, PAGE, PAGE_KEYS

COLUMN = "modality"


def read_pages(table: pa.Table) -> pa.Table:
    """`table` with its legacy page rows (stored "image", `page` and `pages` set) read as "page"."""
    names = table.column_names
    if COLUMN not in names or not all(k in names for k in PAGE_KEYS):
        return table
    col = table.column(COLUMN)
    legacy = pc.and_(pc.equal(col, IMAGE), pc.and_(pc.is_valid(table.column(PAGE_KEYS[0])),
                                                    pc.is_valid(table.column(PAGE_KEYS[1]))))
    legacy = pc.fill_null(legacy, False)
    if not pc.any(legacy).as_py():
        return table
    fixed = pc.if_else(legacy, pa.scalar(PAGE, pa.string()), col.cast(pa.string()))
    return table.set_column(names.index(COLUMN), pa.field(COLUMN, pa.string()), fixed)


def count_table(table: pa.Table, live: Optional[np.ndarray] = None) -> Dict[str, int]:
    """Rows per modality of one meta table (`live`: a bool mask of the rows to count)."""
    if COLUMN not in table.column_names or table.num_rows == 0:
        return {}
    col = table.column(COLUMN)
    if live is not None:
        col = col.filter(pa.array(live))
    counts = pc.value_counts(pc.fill_null(col, "")).to_pylist()
    return {c["values"]: c["counts"] for c in counts if c["counts"]}


def modality_counts(index: Any) -> Dict[str, int]:
    """Live rows (deleted ones left out) per modality of an index snapshot: an `Index`
    (its current view) or an `IndexView`. Keys in vocabulary order (text, image,
    image,text, page), then any other stored string; modalities with no rows omitted.
    Legacy pages count as "page" (see the module docstring)."""
    view = index.view() if hasattr(index, "view") else index
    _, deleted = view.store.tombstones()
    total: Dict[str, int] = {}
    for shard, dead in zip(view.shards, deleted):
        live = None
        if len(dead):
            live = np.ones(shard.rows, dtype=bool)
            live[dead] = False
        for name, n in count_table(shard.meta, live).items():
            total[name] = total.get(name, 0) + n
    order = [m for m in ITEM_MODALITIES if m in total] + sorted(m for m in total if m not in ITEM_MODALITIES)
    return {m: total[m] for m in order}
