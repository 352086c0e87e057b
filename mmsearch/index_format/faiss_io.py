"""FAISS at the format's boundary: metrics, ids, GPU-to-CPU copies, the trained template
(``INDEX/trained.faiss``) and the empty index each shard is filled into."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping, Optional

import faiss
import numpy as np

from mmsearch.errors import IndexFormatError

from .codes import CompactIndex, downcast, is_binary
from .durable import atomic_write_bytes
from .layout import TRAINED_FILE, PathLike, trained_template_path
from .manifest import FaissSpec, FileInfo, Manifest


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
    index = downcast(index)
    if hasattr(index, "id_map"):  # IndexIDMap, IndexIDMap2 (float or binary)
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


def faiss_id_problem(index: faiss.Index, id_start: int, rows: int) -> Optional[str]:
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
    index = index if is_binary(index) else faiss_index_to_cpu(index)
    if not index.is_trained or index.ntotal:
        raise IndexFormatError(f"a template must be trained and empty; got is_trained="
                               f"{index.is_trained}, ntotal={index.ntotal}")
    data = (faiss.serialize_index_binary if is_binary(index) else faiss.serialize_index)(index).tobytes()
    atomic_write_bytes(trained_template_path(index_dir), data)
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
    binary = data[:2] == b"IB"  # faiss's binary fourccs (a binary IVF's lists for compact codes)
    return (faiss.deserialize_index_binary if binary else faiss.deserialize_index)(np.frombuffer(data, dtype=np.uint8))


def new_shard_index(index_dir: PathLike, manifest: Manifest) -> faiss.Index:
    """An empty index for one shard; fill it with ``add_with_ids(x, global_row_ids)``.

    IVF indexes take ids themselves; anything else is wrapped in IndexIDMap (not
    IDMap2: its reverse hash map costs memory on every load, and exact vectors for
    rescoring live in vectors.npy)."""
    spec = manifest.faiss
    if manifest.compact is not None:  # truncated / quantised codes of the vectors added (see .codes)
        template = read_trained_template(index_dir, spec) if spec.trained_path is not None else None
        return CompactIndex(manifest.compact, spec.factory, faiss_metric(manifest.metric), template)
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
