"""The index directory format (DESIGN §5): the only way the indexer and the query
engine read or write an index.

    INDEX/manifest.json               the single source of truth (see index_manifest)
    INDEX/trained.faiss               trained empty FAISS template, when the spec needs training
    INDEX/shards/NNNNN/index.faiss    FAISS index whose search returns global int64 row ids
    INDEX/shards/NNNNN/meta.arrow     Arrow IPC file: id, modality, text, image, then metadata
    INDEX/shards/NNNNN/vectors.npy    optional float16 (rows, dim) vectors, row-aligned
    INDEX/store.lmdb, INDEX/errors.jsonl, INDEX/stats.json

Writing protocol: `write_shard` puts a complete shard directory in place (temporary dir,
fsync, rename); it becomes visible only once the caller commits a manifest listing it
(``write_manifest(d, manifest.with_shard(info))``). A crash in between leaves an
unlisted directory, which `remove_unlisted` deletes when the job resumes. Row i of a
shard's meta.arrow and vectors.npy is global row ``id_start + i``.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Union

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from mmsearch.errors import IndexFormatError, InputError
from mmsearch.index_manifest import (
    DEFAULT_INSTRUCTION_KEY, ERRORS_FILE, FORMAT_VERSION, INDEX_FILE, MANIFEST_FILE, META_FILE,
    METRICS, QUERY_BANK_FILE, QUERY_BANK_INFO_FILE, SHARDS_DIR, STATS_FILE, STORE_DIR, TMP_MARK, TRAINED_FILE, VECTORS_FILE, FaissSpec,
    FileInfo, Manifest, ModelInfo, PathLike, ShardInfo, atomic_write_bytes, atomic_write_json,
    check_model, fsync_dir, fsync_file, model_info_of, read_manifest, sha256_file, tmp_name, utc_now,
    write_manifest)

# The indexer and the query engine import all of the format from here.
__all__ = [
    # layout and version
    "FORMAT_VERSION", "MANIFEST_FILE", "TRAINED_FILE", "SHARDS_DIR", "INDEX_FILE", "META_FILE",
    "VECTORS_FILE", "STORE_DIR", "ERRORS_FILE", "STATS_FILE", "QUERY_BANK_FILE", "QUERY_BANK_INFO_FILE", "META_COLUMNS", "METRICS",
    "DEFAULT_INSTRUCTION_KEY", "TMP_MARK",
    # manifest
    "Manifest", "ModelInfo", "model_info_of", "FaissSpec", "ShardInfo", "FileInfo", "read_manifest",
    "write_manifest", "check_model",
    # durable writes
    "sha256_file", "fsync_file", "fsync_dir", "atomic_write_bytes", "atomic_write_json",
    "tmp_name", "utc_now",
    # faiss
    "faiss_metric", "faiss_index_to_cpu", "faiss_ids", "write_trained_template",
    "read_trained_template", "new_shard_index",
    # shards
    "shard_name", "shard_dir", "build_meta_table", "write_shard", "remove_unlisted",
    "open_shard_index", "open_shard_meta", "load_shard_vectors", "verify_index",
]

META_COLUMNS = ("id", "modality", "text", "image")
_SHARD_NAME = re.compile(r"^\d{5,}$")
_META_BATCH_ROWS = 1 << 16  # several record batches let duckdb/polars scan in parallel

ShardRef = Union[ShardInfo, str]


def shard_name(number: int) -> str:
    """Zero-padded shard directory name: 3 -> "00003"."""
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"shard number must be an int >= 0, got {number!r}")
    return f"{number:05d}"


def shard_dir(index_dir: PathLike, shard: ShardRef) -> Path:
    return Path(index_dir) / SHARDS_DIR / (shard.name if isinstance(shard, ShardInfo) else shard)


# --- FAISS helpers ------------------------------------------------------------------------

def faiss_metric(metric: str) -> int:
    """The faiss metric constant of a manifest metric name."""
    table = {"inner_product": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
    if metric not in table:
        raise IndexFormatError(f"metric {metric!r} is not one of {sorted(table)}")
    return table[metric]


def _sub_indexes(index: faiss.Index) -> Iterable[faiss.Index]:
    for attr in ("index", "base_index", "refine_index", "quantizer", "storage"):
        sub = getattr(index, attr, None)
        if isinstance(sub, faiss.Index):
            yield faiss.downcast_index(sub)
    if hasattr(index, "count") and hasattr(index, "at"):  # IndexShards / IndexReplicas (multi-GPU)
        for i in range(index.count()):
            yield faiss.downcast_index(index.at(i))


def _on_gpu(index: faiss.Index) -> bool:
    index = faiss.downcast_index(index)
    return type(index).__name__.startswith("Gpu") or any(_on_gpu(s) for s in _sub_indexes(index))


def faiss_index_to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (faiss cannot serialize GPU indexes); CPU indexes as is."""
    return faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index


def faiss_ids(index: faiss.Index) -> Optional[np.ndarray]:
    """The int64 ids `index.search` returns for its stored vectors (in storage order),
    or None when they are its positions 0..ntotal-1 (no id map, e.g. a bare Flat/HNSW)."""
    index = faiss.downcast_index(index)
    if hasattr(index, "id_map"):  # IndexIDMap, IndexIDMap2
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    if isinstance(index, faiss.IndexPreTransform):
        return faiss_ids(index.index)
    if isinstance(index, faiss.IndexIVF):
        invlists, parts = index.invlists, []
        for lst in range(index.nlist):
            size = invlists.list_size(lst)
            if size:
                ptr = invlists.get_ids(lst)
                parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                invlists.release_ids(lst, ptr)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)
    return None


def _id_problem(index: faiss.Index, id_start: int, rows: int) -> Optional[str]:
    """Why `index` does not return exactly the ids [id_start, id_start + rows), or None."""
    stored = faiss_ids(index)
    if stored is None:
        if id_start == 0:
            return None
        return (f"the index returns positions 0..{rows - 1} but the shard's ids start at "
                f"{id_start}; wrap it in faiss.IndexIDMap (or add_with_ids to an IVF index)")
    expected = np.arange(id_start, id_start + rows, dtype=np.int64)
    if len(stored) == rows and (np.array_equal(stored, expected)
                                or np.array_equal(np.sort(stored), expected)):
        return None
    got = f"{len(stored)} ids in [{stored.min()}, {stored.max()}]" if len(stored) else "no ids"
    return f"faiss ids ({got}) are not the shard's ids [{id_start}, {id_start + rows})"


def write_trained_template(index_dir: PathLike, index: faiss.Index, factory: str,
                           search_params: Optional[Mapping] = None) -> FaissSpec:
    """Save a trained, empty index as ``INDEX/trained.faiss``; returns the spec to record."""
    index = faiss_index_to_cpu(index)
    if not index.is_trained or index.ntotal:
        raise IndexFormatError(f"a template must be trained and empty; got is_trained="
                               f"{index.is_trained}, ntotal={index.ntotal}")
    data = faiss.serialize_index(index).tobytes()
    atomic_write_bytes(Path(index_dir) / TRAINED_FILE, data)
    info = FileInfo(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    return FaissSpec(factory, TRAINED_FILE, info, search_params or {})


def read_trained_template(index_dir: PathLike, spec: FaissSpec) -> faiss.Index:
    """A fresh, writable copy of the trained template, checksum verified."""
    if spec.trained_path is None:
        raise IndexFormatError(f"faiss spec {spec.factory!r} records no trained template")
    path = Path(index_dir) / spec.trained_path
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IndexFormatError(f"cannot read the trained template {path}: {e}") from e
    if hashlib.sha256(data).hexdigest() != spec.trained_file.sha256:
        raise IndexFormatError(f"trained template {path}: sha256 does not match the manifest")
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def new_shard_index(index_dir: PathLike, manifest: Manifest) -> faiss.Index:
    """An empty index for one shard; fill it with ``add_with_ids(x, global_row_ids)``.

    IVF indexes take ids themselves; anything else is wrapped in IndexIDMap (not
    IDMap2: its reverse hash map costs memory on every load, and exact vectors for
    rescoring live in vectors.npy)."""
    spec = manifest.faiss
    if spec.trained_path is not None:
        index = read_trained_template(index_dir, spec)
    else:
        index = faiss.index_factory(manifest.model.dim, spec.factory, faiss_metric(manifest.metric))
    if not index.is_trained:
        raise IndexFormatError(f"faiss spec {spec.factory!r} needs training; save a trained "
                               f"template with write_trained_template and record its spec")
    if hasattr(index, "id_map") or isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        return index
    return faiss.IndexIDMap(index)


# --- metadata tables ---------------------------------------------------------------------

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


def _shard_meta(table: Union[pa.Table, pa.RecordBatch], name: str, id_start: int,
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
    problem = _meta_id_problem(cols[0])
    if problem:
        raise IndexFormatError(f"write_shard {name}: {problem}")
    others = [c for c in names if c not in META_COLUMNS]
    out = pa.table(cols + [table.column(c) for c in others], names=list(META_COLUMNS) + others)
    tags = {b"mmsearch.format_version": str(FORMAT_VERSION).encode(), b"mmsearch.shard": name.encode(),
            b"mmsearch.id_start": str(id_start).encode()}
    return out.replace_schema_metadata({**(table.schema.metadata or {}), **tags})


def _meta_id_problem(ids: pa.ChunkedArray) -> Optional[str]:
    if ids.null_count:
        return f"meta column 'id' has {ids.null_count} null values"
    counts = pc.value_counts(ids)
    dupes = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dupes):
        return f"meta column 'id' repeats {len(dupes)} ids, e.g. {dupes[0]['values'].as_py()!r}"
    return None


# --- writing shards ------------------------------------------------------------------------

def _check_ids(name: str, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) == 0 or ids.dtype != np.int64:
        raise IndexFormatError(f"write_shard {name}: ids must be a non-empty 1-d int64 array, got "
                               f"dtype {ids.dtype}, shape {ids.shape}")
    if ids[0] < 0 or not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids), dtype=np.int64)):
        raise IndexFormatError(f"write_shard {name}: ids must be contiguous ascending global rows "
                               f"id_start, id_start+1, ...; got {ids[:5].tolist()}...")
    return ids


def _check_vectors(name: str, vectors, rows: int, dim: int) -> Optional[np.ndarray]:
    if vectors is None:
        return None
    vectors = np.ascontiguousarray(vectors, dtype=np.float16)
    if vectors.shape != (rows, dim):
        raise IndexFormatError(f"write_shard {name}: vectors have shape {vectors.shape}, expected "
                               f"({rows}, {dim}) to match the ids and the faiss index")
    return vectors


def _is_listed(index_dir: Path, name: str) -> bool:
    if not (index_dir / MANIFEST_FILE).exists():
        return False
    return any(s.name == name for s in read_manifest(index_dir).shards)


def _write_files(d: Path, index: faiss.Index, meta: pa.Table,
                 vectors: Optional[np.ndarray]) -> dict:
    faiss.write_index(index, str(d / INDEX_FILE))
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
    return {p.name: FileInfo.of(p) for p in sorted(d.iterdir())}


def write_shard(index_dir: PathLike, name: str, faiss_index: faiss.Index, ids: np.ndarray,
                meta_table: pa.Table, vectors: Optional[np.ndarray] = None) -> ShardInfo:
    """Write ``shards/<name>/`` completely and durably; return its ShardInfo.

    `ids` are the shard's global rows (contiguous int64), `faiss_index` must return
    exactly those ids from search, `meta_table` and `vectors` (stored as float16) are
    row-aligned with them. The shard is not visible until a manifest lists it.
    """
    index_dir = Path(index_dir)
    if not isinstance(name, str) or not _SHARD_NAME.match(name):
        raise IndexFormatError(f"shard name must be zero-padded digits like '00000', got {name!r}")
    index = faiss_index_to_cpu(faiss_index)
    ids = _check_ids(name, ids)
    id_start, rows = int(ids[0]), len(ids)
    if index.ntotal != rows:
        raise IndexFormatError(f"write_shard {name}: faiss index holds {index.ntotal} vectors, "
                               f"ids have {rows}")
    problem = _id_problem(index, id_start, rows)
    if problem:
        raise IndexFormatError(f"write_shard {name}: {problem}")
    meta = _shard_meta(meta_table, name, id_start, rows)
    vectors = _check_vectors(name, vectors, rows, index.d)
    if _is_listed(index_dir, name):
        raise IndexFormatError(f"shard {name} is already committed in {index_dir}; "
                               f"write new rows to a new shard")
    shards = index_dir / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    tmp = shards / f"{TMP_MARK}{name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = _write_files(tmp, index, meta, vectors)
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
    if (index_dir / MANIFEST_FILE).exists():  # an unreadable manifest raises: keep the data
        listed = {s.name for s in read_manifest(index_dir).shards}
    removed = []
    shards = index_dir / SHARDS_DIR
    for parent in (index_dir, shards):
        if not parent.is_dir():
            continue
        for entry in sorted(parent.iterdir()):
            ours = TMP_MARK in entry.name or (parent == shards and _SHARD_NAME.match(entry.name))
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
            index = faiss.read_index(path, flags)
            break
        except RuntimeError:  # this index type cannot be mapped that way: try the next
            continue
    if index is None:
        try:
            index = faiss.read_index(path)
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
    """The shard's stored float16 vectors (rows, dim); see ShardInfo.has_vectors."""
    path = _shard_file(index_dir, shard, VECTORS_FILE)
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"cannot read vectors {path}: {e}") from e
    if vectors.ndim != 2:
        raise IndexFormatError(f"vectors {path} must be 2-d, got shape {vectors.shape}")
    _check_rows(shard, VECTORS_FILE, vectors.shape[0])
    return vectors


# --- verification -------------------------------------------------------------------------

def verify_index(index_dir: PathLike) -> List[str]:
    """Every problem found in an index, each naming the shard and file; [] means sound.

    Checks the manifest, the trained template, every listed file's size and sha256,
    and that faiss / meta / vectors agree with the manifest's rows, ids and dim. A file
    whose checksum fails is not parsed further (a corrupt file could crash faiss).
    """
    try:
        manifest = read_manifest(index_dir)
    except IndexFormatError as e:
        return [str(e)]
    problems = []
    spec = manifest.faiss
    if spec.trained_path is not None:
        if _file_problem(Path(index_dir) / spec.trained_path, spec.trained_file, problems, "index"):
            try:
                read_trained_template(index_dir, spec)
            except (IndexFormatError, RuntimeError) as e:
                problems.append(f"index: {spec.trained_path}: unreadable: {e}")
    item_ids = []
    for shard in manifest.shards:
        problems += _verify_shard(index_dir, shard, manifest.model.dim, item_ids)
    if item_ids:
        problem = _meta_id_problem(pa.chunked_array(item_ids))
        if problem:
            problems.append(f"index: {META_FILE}: {problem}")
    return problems


def _file_problem(path: Path, info: FileInfo, problems: List[str], where: str) -> bool:
    """Append a problem unless `path` matches `info`; True when it matches."""
    rel = f"{where}: {path.name}"
    if not path.is_file():
        problems.append(f"{rel}: missing ({path})")
    elif path.stat().st_size != info.bytes:
        problems.append(f"{rel}: {path.stat().st_size} bytes, the manifest says {info.bytes}")
    elif sha256_file(path) != info.sha256:
        problems.append(f"{rel}: sha256 mismatch (file corrupted or replaced)")
    else:
        return True
    return False


def _verify_shard(index_dir: PathLike, shard: ShardInfo, dim: int, item_ids: list) -> List[str]:
    where, problems = f"shard {shard.name}", []
    for required in (INDEX_FILE, META_FILE):
        if required not in shard.files:
            problems.append(f"{where}: {required}: not listed in the manifest")
    folder = shard_dir(index_dir, shard)
    intact = {f for f, info in shard.files.items()
              if _file_problem(folder / f, info, problems, where)}
    checks = {INDEX_FILE: _verify_faiss, META_FILE: _verify_meta, VECTORS_FILE: _verify_vectors}
    for filename, check in checks.items():
        if filename in intact:
            try:
                problem = check(index_dir, shard, dim, item_ids)
            except (IndexFormatError, RuntimeError, OSError, pa.ArrowException) as e:
                problem = f"unreadable: {e}"
            if problem:
                problems.append(f"{where}: {filename}: {problem}")
    return problems


def _verify_faiss(index_dir: PathLike, shard: ShardInfo, dim: int, _ids: list) -> Optional[str]:
    index = open_shard_index(index_dir, shard.name)
    if index.ntotal != shard.rows:
        return f"holds {index.ntotal} vectors, the manifest says {shard.rows}"
    if index.d != dim:
        return f"dimension {index.d}, the model's is {dim}"
    return _id_problem(index, shard.id_start, shard.rows)


def _verify_meta(index_dir: PathLike, shard: ShardInfo, _dim: int, item_ids: list) -> Optional[str]:
    table = open_shard_meta(index_dir, shard.name)
    if table.num_rows != shard.rows:
        return f"has {table.num_rows} rows, the manifest says {shard.rows}"
    if tuple(table.column_names[:len(META_COLUMNS)]) != META_COLUMNS:
        return f"columns {table.column_names} do not start with {list(META_COLUMNS)}"
    tagged = (table.schema.metadata or {}).get(b"mmsearch.id_start")
    if tagged is not None and int(tagged) != shard.id_start:
        return f"was written for id_start {int(tagged)}, the manifest says {shard.id_start}"
    item_ids.extend(table.column("id").chunks)  # uniqueness is checked across all shards
    return None


def _verify_vectors(index_dir: PathLike, shard: ShardInfo, dim: int, _ids: list) -> Optional[str]:
    vectors = load_shard_vectors(index_dir, shard.name)
    if vectors.shape != (shard.rows, dim) or vectors.dtype != np.float16:
        return f"{vectors.dtype} {vectors.shape}, expected float16 ({shard.rows}, {dim})"
    return None
