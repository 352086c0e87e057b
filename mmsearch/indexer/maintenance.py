"""Index upkeep: delete (tombstones), compact (rewrite shards without them), describe."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Iterable, List

import numpy as np

from ..errors import IndexFormatError, InputError
from ..index_format import (VECTORS_FILE, load_shard_tokens, load_shard_vectors, new_shard_index, open_shard_index,
                            open_shard_meta, read_manifest, remove_unlisted, shard_dir, shard_name, store_path, utc_now,
                            vectors_of_stored, write_manifest, write_shard, writer_lock)
from ..store import Store
from .writer import sync_store


def delete_ids(index_dir, ids: Iterable[str]) -> int:
    """Tombstone these ids; search never returns them again. Unknown ids are an error."""
    ids = [str(i) for i in ids]
    if not ids:
        raise InputError("no ids given to delete")
    out = Path(index_dir)
    read_manifest(out)  # a clear error when this is not an index
    with writer_lock(out), Store(store_path(out)) as store:
        return store.add_tombstones(ids)


def _shard_vectors(out: Path, shard, manifest) -> np.ndarray:
    if shard.has_vectors:
        return vectors_of_stored(np.asarray(load_shard_vectors(out, shard)), manifest.compact)
    if shard.has_tokens and manifest.multi_vector is not None:
        # the FDEs again, from the stored tokens: closer to the originals than a PQ index's codes
        from ..multivector import Muvera

        tokens = load_shard_tokens(out, shard)
        muvera = Muvera(tokens.dim, **manifest.multi_vector.fde)
        return muvera.encode_documents(tokens.decode(slice(None)), tokens.offsets)
    index = open_shard_index(out, shard, mmap=False)
    try:
        return index.reconstruct_n(0, index.ntotal)
    except RuntimeError:
        raise IndexFormatError(f"shard {shard.name} has no {VECTORS_FILE} and its faiss index cannot reconstruct "
                               f"vectors; rebuild the index to compact it") from None


def compact(index_dir) -> dict:
    """Rewrite every shard holding deleted rows without them; returns what changed."""
    out = Path(index_dir)
    with writer_lock(out), Store(store_path(out)) as store:
        manifest = read_manifest(out)
        dead = store.tombstoned_rows()
        keep_shards, replaced, removed_rows, dead_ids = [], [], 0, {}
        for shard in manifest.shards:
            rows = np.arange(shard.id_start, shard.id_end)
            gone = np.isin(rows, dead)
            if not gone.any():
                keep_shards.append(shard)
                continue
            replaced.append(shard)
            removed_rows += int(gone.sum())
            shard_ids = open_shard_meta(out, shard).column("id").to_pylist()
            dead_ids.update((shard_ids[i], int(rows[i])) for i in np.flatnonzero(gone))
            if gone.all():
                continue
            manifest, new = _rewrite(out, manifest, shard, ~gone)
            keep_shards.append(new)
        if not replaced:
            return {"shards_rewritten": 0, "rows_removed": 0}
        manifest = dataclasses.replace(manifest, shards=tuple(keep_shards), updated=utc_now())
        write_manifest(out, manifest)
        _resync(out, store, manifest, replaced)
        current = store.rows_for(list(dead_ids))
        gone_ids = [i for (i, row), now in zip(dead_ids.items(), current) if now == row]
        store.delete_ids(gone_ids)
        store.mark_removed(gone_ids)  # a rerun of the build that made the index must not bring them back
        store.clear_tombstone_rows(np.concatenate([np.arange(s.id_start, s.id_end) for s in replaced]))
        for shard in replaced:
            shutil.rmtree(shard_dir(out, shard), ignore_errors=True)
        remove_unlisted(out)
        return {"shards_rewritten": len(replaced), "rows_removed": removed_rows, "rows": manifest.total_rows}


def _rewrite(out: Path, manifest, shard, keep: np.ndarray):
    """A new shard (new global rows at next_row) holding the kept rows of `shard`; not yet listed."""
    vectors = _shard_vectors(out, shard, manifest)[keep]
    meta = open_shard_meta(out, shard).filter(keep)
    start = manifest.next_row
    ids = np.arange(start, start + len(vectors), dtype=np.int64)
    index = new_shard_index(out, manifest)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    number = max(int(s.name) for s in manifest.shards) + 1
    tokens = load_shard_tokens(out, shard).take(np.flatnonzero(keep)) if shard.has_tokens else None
    info = write_shard(out, shard_name(number), index, ids, meta, vectors if shard.has_vectors else None,
                       tokens=tokens)
    # list it now so the next rewrite numbers after it; the caller commits the final list
    manifest = manifest.with_shard(info)
    return manifest, info


def _resync(out: Path, store: Store, manifest, replaced: List) -> None:
    old = {s.name for s in replaced}
    for shard in manifest.shards:
        if shard.id_start >= min(s.id_end for s in replaced) and shard.name not in old:
            ids = open_shard_meta(out, shard).column("id").to_pylist()
            sync_store(store, ids, np.arange(shard.id_start, shard.id_end, dtype=np.int64), manifest.next_row)


def describe(index_dir) -> dict:
    """What `mmsearch index info` shows."""
    out = Path(index_dir)
    manifest = read_manifest(out)
    with Store(store_path(out), readonly=True) as store:
        deleted = int(len(store.tombstoned_rows()))
    d = manifest.to_dict()
    return {
        "path": str(out), "format_version": d["format_version"], "model": d["model"],
        "candidate_instruction": d["candidate_instruction"], "metric": d["metric"], "faiss": d["faiss"],
        "shards": len(manifest.shards), "rows": manifest.total_rows, "deleted": deleted,
        "live_rows": manifest.total_rows - deleted, "bytes": manifest.total_bytes,
        "bytes_per_item": _bytes_per_item(manifest),
        "created": d["created"], "updated": d["updated"],
        **({"multi_vector": d["multi_vector"]} if "multi_vector" in d else {}),
        **({"compact": _compact_summary(manifest.compact)} if manifest.compact is not None else {}),
    }


def _compact_summary(spec) -> dict:
    """The compact spec without its calibration lists (a few numbers per dimension)."""
    return {"precision": spec.precision, "dim": spec.dim, "full_dim": spec.full_dim, "oversample": spec.oversample,
            "rescore": spec.rescore, "rescore_from": spec.rescore_from}


def _bytes_per_item(manifest) -> dict:
    """Bytes on disk per stored row, by what they hold (faiss index, metadata, vectors, tokens)."""
    rows = max(manifest.total_rows, 1)
    kinds: dict = {}
    for shard in manifest.shards:
        for name, f in shard.files.items():
            # a file's kind: its folder (lexical/...) or its stem (index.faiss -> index); token files together
            kind = "tokens" if name.startswith("token") else name.split("/")[0].split(".")[0]
            kinds[kind] = kinds.get(kind, 0) + f.bytes
    out = {k: round(v / rows, 1) for k, v in sorted(kinds.items())}
    out["total"] = round(sum(kinds.values()) / rows, 1)
    return out
