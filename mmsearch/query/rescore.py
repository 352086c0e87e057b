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

from typing import Optional

import faiss


def binary_params(index, ef_search: Optional[int], sel=None):
    """SearchParameters for a binary faiss index (HNSW: efSearch), with `sel`; None when plain."""
    if sel is None and ef_search is None:
        return None
    if isinstance(index, faiss.IndexBinaryHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(ef_search or index.hnsw.efSearch))
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
    return params
