"""`verify_index`: every checksum, row count and id range of an index, checked."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow as pa

from mmsearch.errors import IndexFormatError

from .durable import sha256_file
from .faiss_io import faiss_id_problem, read_trained_template
from .layout import INDEX_FILE, LEXICAL_DIR, META_FILE, TOKENS_FILE, VECTORS_FILE, PathLike, shard_dir
from .lexical import has_lexical, lexical_fields, open_lexical
from .manifest import FileInfo, ShardInfo, read_manifest
from .meta import META_COLUMNS, meta_id_problem
from .shards import load_shard_tokens, load_shard_vectors, open_shard_index, open_shard_meta


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
        stored = manifest.compact.dim if manifest.compact else manifest.model.dim  # faiss holds compact codes
        kept = np.int8 if manifest.compact and manifest.compact.rescore_from == "int8" else np.float16
        problems += _verify_shard(index_dir, shard, manifest.model.dim, item_ids, stored, kept)
        if lexical_fields(manifest.extra) and not has_lexical(shard):
            problems.append(f"shard {shard.name}: {LEXICAL_DIR}/: missing (the manifest names text fields)")
    if item_ids:
        problem = meta_id_problem(pa.chunked_array(item_ids))
        if problem:
            problems.append(f"index: {META_FILE}: {problem}")
    return problems


def _file_problem(path: Path, info: FileInfo, problems: List[str], where: str, name: Optional[str] = None) -> bool:
    """Append a problem unless `path` matches `info`; True when it matches. `name`: how to
    call the file (default its name; a shard's lexical/ files by their path in the shard)."""
    rel = f"{where}: {name or path.name}"
    if not path.is_file():
        problems.append(f"{rel}: missing ({path})")
    elif path.stat().st_size != info.bytes:
        problems.append(f"{rel}: {path.stat().st_size} bytes, the manifest says {info.bytes}")
    elif sha256_file(path) != info.sha256:
        problems.append(f"{rel}: sha256 mismatch (file corrupted or replaced)")
    else:
        return True
    return False


def _verify_shard(index_dir: PathLike, shard: ShardInfo, dim: int, item_ids: list,
                  stored_dim: Optional[int] = None, kept=np.float16) -> List[str]:
    where, problems = f"shard {shard.name}", []
    for required in (INDEX_FILE, META_FILE):
        if required not in shard.files:
            problems.append(f"{where}: {required}: not listed in the manifest")
    folder = shard_dir(index_dir, shard)
    intact = {f for f, info in shard.files.items()
              if _file_problem(folder / f, info, problems, where, f)}
    checks = {INDEX_FILE: partial(_verify_faiss, stored=stored_dim), META_FILE: _verify_meta, VECTORS_FILE: partial(_verify_vectors, kept=kept),
              TOKENS_FILE: _verify_tokens, f"{LEXICAL_DIR}/meta.json": _verify_lexical}
    for filename, check in checks.items():
        if filename in intact:
            try:
                problem = check(index_dir, shard, dim, item_ids)
            except (IndexFormatError, RuntimeError, OSError, pa.ArrowException) as e:
                problem = f"unreadable: {e}"
            if problem:
                problems.append(f"{where}: {filename}: {problem}")
    return problems


def _verify_faiss(index_dir: PathLike, shard: ShardInfo, dim: int, _ids: list,
                  stored: Optional[int] = None) -> Optional[str]:
    index = open_shard_index(index_dir, shard.name)
    if index.ntotal != shard.rows:
        return f"holds {index.ntotal} vectors, the manifest says {shard.rows}"
    if index.d != (stored or dim):
        return f"dimension {index.d}, the manifest's is {stored or dim}"
    return faiss_id_problem(index, shard.id_start, shard.rows)


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


def _verify_vectors(index_dir: PathLike, shard: ShardInfo, dim: int, _ids: list, kept=np.float16) -> Optional[str]:
    """vectors.npy holds one row per item, full size, as the manifest says it keeps them."""
    vectors = load_shard_vectors(index_dir, shard.name)
    if vectors.shape != (shard.rows, dim) or vectors.dtype != kept:
        return f"{vectors.dtype} {vectors.shape}, expected {np.dtype(kept).name} ({shard.rows}, {dim})"
    return None


def _verify_tokens(index_dir: PathLike, shard: ShardInfo, _dim: int, _ids: list) -> Optional[str]:
    load_shard_tokens(index_dir, shard)  # offsets cover the rows and the matrix (raises IndexFormatError)
    return None


def _verify_lexical(index_dir: PathLike, shard: ShardInfo, _dim: int, _ids: list) -> Optional[str]:
    open_lexical(index_dir, shard, rows=shard.rows)  # one document per row (raises IndexFormatError)
    return None
