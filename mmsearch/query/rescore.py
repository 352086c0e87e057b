"""Searching compact codes (`mmsearch.index_format.codes`) from a shard: faiss search
parameters for binary indexes. The two stages themselves (`Shard.search`):

1. the query is cut to the stored Matryoshka size and re-normalised (binary: its sign
   bits; `first_stage_queries`), and the shard's faiss index returns ``oversample * k``
   candidates by inner product on float16/int8 codes or by Hamming distance on bits;
2. `rescore` scores those candidates against the full float vectors (vectors.npy, read
   through its memory map: only the candidates' rows are touched) and keeps the top k.

The numpy parts live in the index format (`codes`), where the indexer's `auto` measures
the same two stages when it chooses a precision.
"""
from __future__ import annotations

import faiss

from .params import SearchParams


def binary_params(index, knobs: SearchParams, sel=None):
    """SearchParameters for a binary faiss index (HNSW: efSearch; IVF: nprobe), with `sel`
    (faiss refuses one for a binary IVF: the caller then post-filters); None when plain."""
    if isinstance(index, faiss.IndexBinaryHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(knobs.efSearch or index.hnsw.efSearch))
    elif isinstance(index, faiss.IndexBinaryIVF):
        params = faiss.SearchParametersIVF(nprobe=int(min(knobs.nprobe or index.nprobe, index.nlist)))
    elif sel is None:
        return None
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
    return params
