"""An index's live rows, read through `mmsearch.index_format` (for `index ids|export|info`)."""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np


def live_tables(index_dir, vectors: bool = False) -> Iterator[Tuple["object", "object"]]:
    """(meta table, vectors or None) per shard, deleted rows left out, in row order."""
    from ..errors import InputError
    from ..query.modality import read_pages
    from ..index_format import (load_shard_vectors, open_shard_meta, read_manifest, require_index, store_path,
                                vectors_of_stored)
    from ..store import Store

    require_index(index_dir, "build one with `mmsearch index build`")
    manifest = read_manifest(index_dir)
    with Store(store_path(index_dir), readonly=True) as store:
        deleted = store.tombstoned_rows()
    for shard in manifest.shards:
        table = open_shard_meta(index_dir, shard)
        rows = np.arange(shard.id_start, shard.id_end, dtype=np.int64)
        keep = ~np.isin(rows, deleted)
        vecs = None
        if vectors:
            if not shard.has_vectors:
                raise InputError(f"shard {shard.name} of {index_dir} keeps no vectors (built with --no-vectors); "
                                 f"export without --vectors")
            vecs = vectors_of_stored(np.asarray(load_shard_vectors(index_dir, shard))[keep], manifest.compact)
        yield read_pages(table if keep.all() else table.filter(keep)), vecs


def columns(index_dir) -> List[str]:
    """The metadata table's columns (the first shard's; every shard has the same)."""
    from ..index_format import META_COLUMNS, open_shard_meta, read_manifest

    manifest = read_manifest(index_dir)
    if not manifest.shards:
        return list(META_COLUMNS)
    return list(open_shard_meta(index_dir, manifest.shards[0]).schema.names)
