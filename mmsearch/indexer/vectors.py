"""Indexing precomputed vectors: the same shards, manifest and store as a model-driven build.

For embeddings made elsewhere (another pipeline, a baseline model) and for the
ANN benchmarks, which measure the index, not the encoder.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..index_format import Manifest, ModelInfo, store_path, wipe_index, writer_lock
from ..store import Store
from ..types import TEXT, Item
from . import compact_plan, planner
from .prepare import Prepared
from .settings import BuildSettings
from .writer import ShardWriter

CHUNK = 65_536


def index_vectors(out, vectors: np.ndarray, ids: Sequence[str], *, texts: Optional[Sequence[str]] = None,
                  metadata: Optional[Sequence[Mapping]] = None, model: Optional[ModelInfo] = None,
                  index: str = "auto", memory_budget: Optional[int] = None, shard_size: int = 100_000,
                  store_vectors: bool = True, recall_target: float = 0.95, train_size: Optional[int] = None,
                  instructions: Optional[dict] = None, precision: Optional[str] = None, dim: Optional[int] = None,
                  oversample: float = 4.0, rescore: bool = True, rescore_from: str = "float16",
                  matryoshka_sizes: Optional[Sequence[int]] = None) -> Manifest:
    """Write a new index at `out` from L2-normalised float32 `vectors` (n, d) and string `ids`.

    Compact vectors (see `compact_plan`): `precision` of the first stage's codes ("auto": the
    memory budget picks dim and precision among `matryoshka_sizes`), `dim` a Matryoshka
    truncation of the vectors indexed while vectors.npy keeps them whole for rescoring;
    `rescore_from="int8"` keeps them there as int8 codes (ranges calibrated on the corpus)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(ids):
        raise InputError(f"vectors must be (n, d) with n == len(ids); got {x.shape} for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise InputError("ids must be unique")
    model = model or ModelInfo(id="external", backbone="external", dim=x.shape[1], dtype="float32")
    out = Path(out)
    settings = BuildSettings(index=index, memory_budget=memory_budget, store_vectors=store_vectors, dim=dim,
                             keep_full=dim is not None, precision=precision, oversample=oversample, rescore=rescore,
                             rescore_from=rescore_from)
    sizes = None if matryoshka_sizes is None else (x.shape[1],) + tuple(sorted(matryoshka_sizes, reverse=True))
    plan = compact_plan.apply(lambda: planner.plan(index, x.shape[1], len(x), memory_budget, shard_size), settings,
                              SimpleNamespace(dim=x.shape[1]), None, lambda: len(x), sizes=sizes)
    with writer_lock(out):
        wipe_index(out)
        with Store(store_path(out)) as store:
            writer = ShardWriter(out, store, model, instructions or {}, plan, shard_size=shard_size,
                                 store_vectors=store_vectors, train_size=planner.train_size(plan, train_size),
                                 recall_target=recall_target, extra={"source": "vectors"})
            for start in range(0, len(x), CHUNK):
                stop = min(start + CHUNK, len(x))
                rows = [_row(str(ids[i]), texts[i] if texts is not None else None,
                             metadata[i] if metadata is not None else {}) for i in range(start, stop)]
                writer.add(rows, x[start:stop])
            return writer.finish()


def _row(item_id: str, text: Optional[str], meta: Mapping) -> Prepared:
    """The fields the shard writer reads (id, modality, text, image ref, metadata)."""
    return Prepared(item=Item(id=item_id, text=text), where="", request=None, modality=TEXT,
                    instruction_key=TEXT, content_hash="", image_ref=None, thumbnail=None, metadata=dict(meta))
