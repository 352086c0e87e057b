"""Multi-vector (late-interaction) search math, numpy only: MUVERA fixed-dimensional
encodings that let one FAISS vector per page find candidates, and exact MaxSim over token
vectors stored flat (float16, or int8 with a per-token scale) to rerank them."""
from .heatmap import match_heat
from .maxsim import TokenStore, exhaustive_search, map_queries, maxsim_scores, quantize_tokens, rerank
from .muvera import Muvera
from .sets import check_sets, flatten_sets

__all__ = ["Muvera", "match_heat", "TokenStore", "check_sets", "exhaustive_search", "flatten_sets", "map_queries",
           "maxsim_scores", "quantize_tokens", "rerank"]
