"""Shard folders (``INDEX/shards/NNNNN/``): writing one durably, sweeping leftovers,
and opening its files for reading.

Writing protocol: `write_shard` puts a complete shard directory in place (temporary dir,
fsync, rename); it becomes visible only once the caller commits a manifest listing it
(``write_manifest(d, manifest.with_shard(info))``). A crash in between leaves an
unlisted directory, which `remove_unlisted` deletes when the job resumes. Row i of a
shard's meta.arrow and vectors.npy is global row ``id_start + i``.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import List, Optional, Union

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from mmsearch.errors import IndexFormatError

from .codes import CompactIndex, read_faiss_index, stored_vectors, write_faiss_index
from .durable import fsync_dir, fsync_file
from .faiss_io import faiss_id_problem, faiss_index_to_cpu
from .lexical import lexical_fields, lexical_file_entries, lexical_texts, write_lexical
from .layout import (INDEX_FILE, META_FILE, SHARD_NAME, TMP_MARK, VECTORS_FILE, PathLike, manifest_path, shard_dir,
                     shards_path)
from .manifest import FileInfo, ShardInfo, read_manifest
from .meta import canonical_meta
from .tokens import TokenMatrix, read_tokens, write_tokens

_META_BATCH_ROWS = 1 << 16  # several record batches let duckdb/polars scan in parallel

ShardRef = Union[ShardInfo, str]


def _check_ids(name: str, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) == 0 or ids.dtype != np.int64:
        raise IndexFormatError(f"write_shard {name}: ids must be a non-empty 1-d int64 array, got "
                               f"dtype {ids.dtype}, shape {ids.shape}")
    if ids[0] < 0 or not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids), dtype=np.int64)):
        raise IndexFormatError(f"write_shard {name}: ids must be contiguous ascending global rows "
                               f"id_start, id_start+1, ...; got {ids[:5].tolist()}...")
    return ids


def _check_vectors(name: str, vectors, rows: int, dim: int, spec=None) -> Optional[np.ndarray]:
    """The vectors as vectors.npy keeps them (`codes.stored_vectors`: float16, or a compact
    spec's int8 rescoring codes)."""
    if vectors is None:
        return None
    if np.shape(vectors) != (rows, dim):
        raise IndexFormatError(f"write_shard {name}: vectors have shape {np.shape(vectors)}, expected "
                               f"({rows}, {dim}) to match the ids and the faiss index")
    return stored_vectors(vectors, spec)


def _is_listed(index_dir: Path, name: str) -> bool:
    if not manifest_path(index_dir).exists():
        return False
    return any(s.name == name for s in read_manifest(index_dir).shards)


def _lexical_texts(index_dir: Path, meta: pa.Table) -> Optional[List[str]]:
    """The rows' texts for the lexical index when the committed manifest names text fields
    (read here, so every shard writer - build, add, compaction, Ray - writes it alike)."""
    if not manifest_path(index_dir).exists():
        return None
    fields = lexical_fields(read_manifest(index_dir).extra)
    return lexical_texts(meta, fields) if fields else None


def _write_files(d: Path, index: faiss.Index, meta: pa.Table,
                 vectors: Optional[np.ndarray], tokens: Optional[TokenMatrix] = None,
                 lexical: Optional[List[str]] = None) -> dict:
    write_faiss_index(index, str(d / INDEX_FILE))
    fsync_file(d / INDEX_FILE)
    # Uncompressed IPC file: readers memory-map it and take rows without copying.
    with pa.OSFile(str(d / META_FILE), "wb") as sink, ipc.new_file(sink, meta.schema) as writer:
        writer.write_table(meta, max_chunksize=_META_BATCH_ROWS)
    fsync_file(d / META_FILE)
    if vectors is not None:
        with open(d / VECTORS_FILE, "wb") as f:
            np.save(f, vectors, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    if tokens is not None:
        write_tokens(d, tokens)
    if lexical is not None:
        write_lexical(d, lexical)
    return {p.relative_to(d).as_posix(): FileInfo.of(p) for p in lexical_file_entries(d)}


def write_shard(index_dir: PathLike, name: str, faiss_index: faiss.Index, ids: np.ndarray,
                meta_table: pa.Table, vectors: Optional[np.ndarray] = None,
                tokens: Optional[TokenMatrix] = None) -> ShardInfo:
    """Write ``shards/<name>/`` completely and durably; return its ShardInfo.

    `ids` are the shard's global rows (contiguous int64), `faiss_index` must return
    exactly those ids from search, `meta_table`, `vectors` (stored as float16; int8 codes
    when a compact index rescores from int8) and a
    multi-vector model's `tokens` are row-aligned with them. When the committed manifest
    names text fields, the shard's lexical index is built from `meta_table` (`.lexical`).
    The shard is not visible until a manifest lists it.
    """
    index_dir = Path(index_dir)
    if not isinstance(name, str) or not SHARD_NAME.match(name):
        raise IndexFormatError(f"shard name must be zero-padded digits like '00000', got {name!r}")
    width = faiss_index.d  # the vectors' (a CompactIndex stores shorter or coarser codes of them)
    index = faiss_index.faiss if isinstance(faiss_index, CompactIndex) else faiss_index_to_cpu(faiss_index)
    ids = _check_ids(name, ids)
    id_start, rows = int(ids[0]), len(ids)
    if index.ntotal != rows:
        raise IndexFormatError(f"write_shard {name}: faiss index holds {index.ntotal} vectors, "
                               f"ids have {rows}")
    problem = faiss_id_problem(index, id_start, rows)
    if problem:
        raise IndexFormatError(f"write_shard {name}: {problem}")
    meta = canonical_meta(meta_table, name, id_start, rows)
    vectors = _check_vectors(name, vectors, rows, width, faiss_index.spec if isinstance(faiss_index, CompactIndex)
                             else None)
    if tokens is not None:
        tokens.check(f"write_shard {name}", rows)
    if _is_listed(index_dir, name):
        raise IndexFormatError(f"shard {name} is already committed in {index_dir}; "
                               f"write new rows to a new shard")
    shards = shards_path(index_dir)
    shards.mkdir(parents=True, exist_ok=True)
    tmp = shards / f"{TMP_MARK}{name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = _write_files(tmp, index, meta, vectors, tokens, _lexical_texts(index_dir, meta))
        fsync_dir(tmp)
        final = shards / name
        if final.exists():  # a stale, unlisted leftover of an earlier crashed run
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(shards)
    return ShardInfo(name=name, rows=rows, id_start=id_start, id_end=id_start + rows, files=files)


def remove_unlisted(index_dir: PathLike) -> List[str]:
    """Delete shard dirs the manifest does not list and leftover temporary files.

    Returns what was removed, relative to `index_dir`. Call it only while no other
    process writes to the index (resume does, before writing new shards). Entries
    that mmsearch would not have created are left alone.
    """
    index_dir = Path(index_dir)
    listed = set()
    if manifest_path(index_dir).exists():  # an unreadable manifest raises: keep the data
        listed = {s.name for s in read_manifest(index_dir).shards}
    removed = []
    shards = shards_path(index_dir)
    for parent in (index_dir, shards):
        if not parent.is_dir():
            continue
        for entry in sorted(parent.iterdir()):
            ours = TMP_MARK in entry.name or (parent == shards and SHARD_NAME.match(entry.name))
            if not ours or entry.name in listed:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(str(entry.relative_to(index_dir)))
        if removed:
            fsync_dir(parent)
    return removed


# --- reading shards -----------------------------------------------------------------------

def _shard_file(index_dir: PathLike, shard: ShardRef, filename: str) -> Path:
    path = shard_dir(index_dir, shard) / filename
    if not path.is_file():
        name = shard.name if isinstance(shard, ShardInfo) else shard
        raise IndexFormatError(f"shard {name}: missing {filename} ({path})")
    return path


def _check_rows(shard: ShardRef, filename: str, rows: int) -> None:
    if isinstance(shard, ShardInfo) and rows != shard.rows:
        raise IndexFormatError(f"shard {shard.name}: {filename} has {rows} rows, "
                               f"the manifest says {shard.rows}")


def _mmap_flags() -> List[int]:
    flags = []
    if hasattr(faiss, "IO_FLAG_MMAP_IFC"):  # faiss >= 1.10: zero-copy codes of Flat/HNSW/IVF
        flags.append(faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    flags.append(faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)  # mmaps IVF inverted lists
    return flags


def open_shard_index(index_dir: PathLike, shard: ShardRef, mmap: bool = True) -> faiss.Index:
    """The shard's FAISS index, memory-mapped read-only where the index type allows it."""
    path = str(_shard_file(index_dir, shard, INDEX_FILE))
    index = None
    for flags in _mmap_flags() if mmap else []:
        try:
            index = read_faiss_index(path, flags)
            break
        except RuntimeError:  # this index type cannot be mapped that way: try the next
            continue
    if index is None:
        try:
            index = read_faiss_index(path)
        except RuntimeError as e:
            raise IndexFormatError(f"cannot read FAISS index {path}: {e}") from e
    _check_rows(shard, INDEX_FILE, index.ntotal)
    return index


def open_shard_meta(index_dir: PathLike, shard: ShardRef) -> pa.Table:
    """The shard's metadata table, memory-mapped (row i is global row id_start + i)."""
    path = str(_shard_file(index_dir, shard, META_FILE))
    try:
        # The mapping stays alive as long as the table's buffers reference it.
        table = ipc.open_file(pa.memory_map(path, "r")).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise IndexFormatError(f"cannot read Arrow IPC file {path}: {e}") from e
    _check_rows(shard, META_FILE, table.num_rows)
    return table


def load_shard_vectors(index_dir: PathLike, shard: ShardRef, mmap: bool = True) -> np.ndarray:
    """The shard's stored vectors (rows, dim) as kept: float16, or int8 codes (decode rows
    with `codes.vectors_of_stored`); see ShardInfo.has_vectors."""
    path = _shard_file(index_dir, shard, VECTORS_FILE)
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"cannot read vectors {path}: {e}") from e
    if vectors.ndim != 2:
        raise IndexFormatError(f"vectors {path} must be 2-d, got shape {vectors.shape}")
    _check_rows(shard, VECTORS_FILE, vectors.shape[0])
    return vectors


def load_shard_tokens(index_dir: PathLike, shard: ShardRef, mmap: bool = True) -> TokenMatrix:
    """A multi-vector shard's token vectors (memory-mapped); see ShardInfo.has_tokens."""
    rows = shard.rows if isinstance(shard, ShardInfo) else None
    return read_tokens(shard_dir(index_dir, shard), rows, mmap)
