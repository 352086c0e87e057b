"""The encode stage: prepared items -> vectors, through the embedding cache.

Shared by the local engine (its encoder thread) and the Ray engine (its encoder
actors). Vectors are looked up in the cache by (model, instruction, content
hash) first; only misses go to the model. The caller stores `Encoded.fresh` in
the cache (the local engine at once, the Ray driver when it ingests a batch).
A multi-vector encoder (`encoders.fde.FdeEncoder`) gives each item's token matrix
as well as its FDE; those bypass the cache, which holds one vector per key.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..encoders.base import Encoder
from ..store import cache_key
from .prepare import Prepared

CacheGet = Callable[[List[bytes]], Mapping[bytes, np.ndarray]]


@dataclass
class Encoded:
    vectors: np.ndarray                     # (n, dim) float32; rows of failed items are zeros
    keys: List[bytes]                       # cache key of each item
    tokens: Optional[List[Optional[np.ndarray]]] = None  # a multi-vector model's token matrices (None: failed)
    failed: Dict[int, str] = field(default_factory=dict)          # position -> reason
    fresh: Dict[bytes, np.ndarray] = field(default_factory=dict)  # computed now, for the cache
    cache_hits: int = 0
    encoded: int = 0                        # items the model encoded now
    seconds: float = 0.0                    # time spent in the model

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.keys), dtype=bool)
        mask[list(self.failed)] = False
        return mask


def model_key(encoder: Encoder) -> str:
    """Weights, and the recipe and size that turn them into vectors (one checkpoint
    embeds differently under another family, or truncated)."""
    family = getattr(encoder, "family", None)
    if family is None:
        return f"{encoder.backbone}:{encoder.fingerprint}"
    return f"{encoder.backbone}:{encoder.fingerprint}:{family}/{encoder.recipe.rule}:{encoder.dim}"


def cache_keys(key: str, chunk: Sequence[Prepared]) -> List[bytes]:
    return [cache_key(key, p.request.instruction or "", p.content_hash) for p in chunk]


def encode_chunk(encoder: Encoder, chunk: Sequence[Prepared], cache_get: Optional[CacheGet],
                 batch_size: Optional[int], first: bool) -> Encoded:
    """Vectors for `chunk`. `first` says nothing was encoded yet in this run (or actor):
    then a chunk where every item fails means the model is broken, and that raises."""
    keys = cache_keys(model_key(encoder), chunk)
    multi = getattr(encoder, "multi_vector", False)
    cached = dict(cache_get(keys)) if cache_get is not None and keys and not multi else {}
    result = Encoded(np.zeros((len(chunk), encoder.dim), dtype=np.float32), keys,
                     tokens=[None] * len(chunk) if multi else None)
    todo = [i for i, k in enumerate(keys) if k not in cached]
    for i, k in enumerate(keys):
        if k in cached:
            result.vectors[i] = cached[k]
    result.cache_hits = len(chunk) - len(todo)
    if todo:
        t0 = time.perf_counter()
        fresh, tokens, failed = _encode_requests(encoder, [chunk[i] for i in todo], batch_size, first)
        result.seconds = time.perf_counter() - t0
        for j, i in enumerate(todo):
            if j in failed:
                result.failed[i] = failed[j]
            elif multi:
                result.vectors[i], result.tokens[i] = fresh[j], tokens[j]
            else:
                result.vectors[i] = fresh[j]
                result.fresh[keys[i]] = fresh[j]
        result.encoded = len(todo) - len(failed)
    return result


def _encode_requests(encoder: Encoder, items: List[Prepared], batch_size: Optional[int], first: bool):
    """(vectors, token matrices or None, {position: reason}) of `items`; on a model error,
    retry one by one and report which failed. If nothing could ever be encoded the model
    itself is broken: raise."""
    def run(requests, bs=None):
        if getattr(encoder, "multi_vector", False):
            return encoder.encode_requests_with_tokens(requests, batch_size=bs, show_progress=False)
        return encoder.encode_requests(requests, batch_size=bs, show_progress=False), None

    try:
        return (*run([p.request for p in items], batch_size), {})
    except Exception as batch_error:
        first_error = batch_error
    vectors = np.zeros((len(items), encoder.dim), dtype=np.float32)
    tokens: Optional[list] = [None] * len(items) if getattr(encoder, "multi_vector", False) else None
    failed = {}
    for j, p in enumerate(items):
        try:
            one, one_tokens = run([p.request])
            vectors[j] = one[0]
            if tokens is not None:
                tokens[j] = one_tokens[0]
        except Exception as e:  # e.g. an aspect ratio the processor refuses
            failed[j] = f"the model could not encode it: {type(e).__name__}: {e}"
    if len(failed) == len(items) and first:
        raise first_error
    return vectors, tokens, failed
