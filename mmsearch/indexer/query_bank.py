"""The query bank of an index: embeddings of typical queries for the hubness reranker.

    INDEX/query_bank.npy    float32 (n, dim), rows L2-normalised, `np.save` format
    INDEX/query_bank.json   how it was made: {model, weight_hash, dim, count, task, instruction, created}

(both read and written by `mmsearch.index_format.query_bank`; this module encodes). The bank is made with the index's own model and the *query* instruction searches
will use (`mmsearch.tasks.resolve_instruction`, as the query engine resolves it), so
that bank queries and real queries are comparable. The hubness reranker reads both
files; a search whose instruction differs from the recorded one gets a warning.

Queries come as a file (one text per line, or JSONL with a "text"/"query" field and
an optional "image" path relative to the file), as a list (str = text, os.PathLike or
PIL image = image, `Query`), or as a precomputed (n, dim) array.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..errors import InputError
from ..index_format import check_model, model_info_of, read_manifest, save_query_bank, utc_now, writer_lock
from ..tasks import resolve_instruction
from ..types import Query
from .loading import load_build_encoder, multi_vector_setup
from .settings import BuildSettings

# Read by the query engine under the same names (mmsearch.query.index).
TEXT_FIELDS = ("text", "query")
JSONL_SUFFIXES = (".jsonl", ".ndjson")

BankInput = Union[str, os.PathLike, np.ndarray, Sequence[Any]]


def write_query_bank(index_dir, queries: BankInput, *, task: Optional[str] = None,
                     instruction: Optional[str] = None, encoder=None, batch_size: Optional[int] = None,
                     device: str = "auto", show_progress: bool = False) -> dict:
    """Encode `queries` with the index's model and query instruction (`task`'s query side,
    or `instruction` verbatim; neither: none, as a search without a task) and replace
    ``INDEX/query_bank.npy``. Returns the bank's description (what query_bank.json holds)
    and its path. Precomputed vectors are stored as given (rows normalised); `task` or
    `instruction` then only records how they were made.

    Everything is read and encoded before anything is written, so bad input leaves an
    existing bank untouched."""
    out = Path(index_dir)
    manifest = read_manifest(out)  # a clear error when this is not an index
    bank_instruction(task, instruction)  # fail before loading a model
    bank_queries = load_bank_queries(queries)
    with writer_lock(out):
        if encoder is None and not isinstance(bank_queries, np.ndarray):
            encoder = load_build_encoder(BuildSettings(device=device), manifest, None)
        if encoder is not None:  # a multi-vector index's bank holds query FDEs
            encoder = multi_vector_setup(BuildSettings(device=device), manifest, encoder)[0]
        return store_query_bank(out, manifest, bank_queries, task=task, instruction=instruction, encoder=encoder,
                                batch_size=batch_size, show_progress=show_progress)


def store_query_bank(out: Path, manifest, bank_queries, *, task: Optional[str], instruction: Optional[str],
                     encoder, batch_size: Optional[int] = None, show_progress: bool = False) -> dict:
    """Encode (unless already vectors) and write the bank; the caller holds the index lock.
    Returns the bank's description and its path."""
    chosen = bank_instruction(task, instruction, encoder)
    dim = manifest.model.dim
    if isinstance(bank_queries, np.ndarray):
        bank = _unit_rows(_checked_bank(bank_queries, dim))
    else:
        check_model(manifest.model, model_info_of(encoder))
        bank = _checked_bank(encoder.encode(bank_queries, instruction=chosen or None, batch_size=batch_size,
                                            show_progress=show_progress), dim)
    info = {"model": manifest.model.id, "weight_hash": manifest.model.weight_hash, "dim": dim,
            "count": len(bank), "task": task, "instruction": chosen, "created": utc_now()}
    path = save_query_bank(out, bank, info)
    return {"path": str(path), **info}


def bank_instruction(task: Optional[str], instruction: Optional[str], encoder=None) -> str:
    """The query-side instruction a search with this task/instruction uses ("" for none);
    with the encoder, a task resolves through the model's own prompts first, as searches do."""
    if task is not None and instruction is not None:
        raise InputError("give either task or instruction for the query bank, not both")
    if task is not None and instruction is None and hasattr(encoder, "task_instruction"):
        return encoder.task_instruction(task, "query")
    return resolve_instruction(task=task, instruction=instruction, side="query")


def load_bank_queries(queries: BankInput) -> Union[np.ndarray, List[Any]]:
    """What to encode (or the vectors themselves), checked: a file is read, a list is
    validated item by item, an array is taken as precomputed embeddings."""
    if isinstance(queries, (str, os.PathLike)):
        return read_query_file(queries)
    if isinstance(queries, np.ndarray):
        return queries
    if isinstance(queries, (bytes, Query, Image.Image)) or not isinstance(queries, Sequence):
        raise InputError(f"query bank {type(queries).__name__}: expected a file path, a list of queries "
                         f"(str text, image path, PIL image or Query) or an (n, dim) array")
    out = [_bank_query(q, f"query #{i}") for i, q in enumerate(queries)]
    if not out:
        raise InputError("the query bank list is empty; give at least one query")
    return out


def read_query_file(path) -> Union[np.ndarray, List[Any]]:
    """Queries from a text file (one per line), a JSONL file or a .npy of embeddings."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"query bank file {path}: cannot read it as a .npy array ({e})") from None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"query bank file {path}: {getattr(e, 'strerror', None) or e}") from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise InputError(f"query bank file {path} has no queries (one per line, or JSONL with a \"text\" field)")
    if path.suffix.lower() in JSONL_SUFFIXES:
        return [_jsonl_query(line, f"{path}:{n}", path.parent) for n, line in numbered]
    return [line for _, line in numbered]


def _jsonl_query(line: str, where: str, root: Path) -> Query:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    text = next((row[f] for f in TEXT_FIELDS if row.get(f) is not None), None)
    image = row.get("image")
    if not isinstance(text, (str, type(None))) or not isinstance(image, (str, type(None))) or not (text or image):
        raise InputError(f"{where}: expected a string field {' or '.join(map(repr, TEXT_FIELDS))} "
                         f"and/or an \"image\" path")
    return Query(text=text or None, image=None if image is None else str(root / image))


def _bank_query(q: Any, where: str):
    """One list entry as the encoder takes it. The bank has one instruction, so a Query
    may not bring its own."""
    if isinstance(q, str):
        if not q.strip():
            raise InputError(f"{where} of the query bank is an empty string")
        return q
    if isinstance(q, (os.PathLike, Image.Image)):
        return Query(image=q)
    if isinstance(q, Query):
        if q.instruction is not None or q.task is not None:
            raise InputError(f"{where} of the query bank has its own instruction/task; the bank is encoded with "
                             f"one instruction: pass task= or instruction= to write_query_bank instead")
        return q
    raise InputError(f"{where} of the query bank: cannot encode {type(q).__name__}; expected str (text), "
                     f"an image path (os.PathLike), a PIL image or mmsearch.Query")


def _checked_bank(bank: Any, dim: int) -> np.ndarray:
    bank = np.asarray(bank)
    if bank.ndim != 2 or len(bank) == 0 or bank.shape[1] != dim or bank.dtype.kind not in "fiu":
        raise InputError(f"query bank must be a non-empty numeric (n, {dim}) array for this index "
                         f"(its model has dim {dim}), got {bank.dtype} {bank.shape}")
    return np.ascontiguousarray(bank, dtype=np.float32)


def _unit_rows(bank: np.ndarray) -> np.ndarray:
    """Precomputed rows L2-normalised, as the encoders' own output is."""
    norms = np.linalg.norm(bank, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InputError("query bank rows must be finite and non-zero")
    return bank / norms

