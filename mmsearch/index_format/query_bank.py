"""The query bank's files: embeddings of typical queries for the hubness reranker.

    INDEX/query_bank.npy    float32 (n, dim), rows L2-normalised, `np.save` format
    INDEX/query_bank.json   how it was made: {model, weight_hash, dim, count, task, instruction, created}

Encoding the queries is the indexer's part (`mmsearch.indexer.query_bank`); this
module only reads and writes the two files.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from mmsearch.errors import IndexFormatError

from .durable import atomic_write_bytes, atomic_write_json
from .layout import PathLike, query_bank_paths


def save_query_bank(index_dir: PathLike, bank: np.ndarray, info: Mapping[str, Any]) -> Path:
    """Replace the bank and its description; returns the bank's path. The old description
    goes first: a crash in between leaves a bank without provenance, never a bank with
    someone else's."""
    vectors_path, info_path = query_bank_paths(index_dir)
    buffer = io.BytesIO()
    np.save(buffer, bank, allow_pickle=False)
    info_path.unlink(missing_ok=True)
    atomic_write_bytes(vectors_path, buffer.getvalue())
    atomic_write_json(info_path, dict(info))
    return vectors_path


def load_query_bank(index_dir: PathLike, dim: int) -> Optional[np.ndarray]:
    """The bank as C-contiguous float32 (n, dim), or None when the index has none.
    IndexFormatError naming the file when it cannot be read or has the wrong shape."""
    path = query_bank_paths(index_dir)[0]
    if not path.is_file():
        return None
    try:
        bank = np.load(path, allow_pickle=False)
        if bank.ndim != 2 or bank.shape[1] != dim or len(bank) == 0:
            raise ValueError(f"query bank must be a non-empty (n, {dim}) array, got shape {bank.shape}")
        return np.ascontiguousarray(bank, dtype=np.float32)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"cannot read the query bank {path}: {e}") from e


def load_query_bank_info(index_dir: PathLike) -> Optional[Any]:
    """The bank's description as written (normally a dict), or None when there is none."""
    path = query_bank_paths(index_dir)[1]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"cannot read the query bank's description {path}: {e}") from e
