"""The search engine: open an index, search it, filter, rerank (DESIGN §6).

Imports only the core (index format, store, encoders, types, tasks, images).
"""
from mmsearch.index_format import QUERY_BANK_FILE

from .filtered import FilterPolicy
from .hits import Hit
from .index import Index, open_index, search
from .modality import modality_counts
from .params import SearchParams
from .rerank import RERANKERS, Hubness, Refine, RerankContext
from .vlm import VLMReranker

__all__ = [
    "QUERY_BANK_FILE", "RERANKERS", "FilterPolicy", "Hit", "Hubness", "Index", "Refine",
    "RerankContext", "SearchParams", "VLMReranker", "modality_counts", "open_index", "search",
]
