"""mmsearch: multimodal vector search with VLM2Vec embeddings.

The public API (DESIGN.md §2). Everything else is reachable through the
subpackages but is not part of the contract.
"""
from ._version import __version__
from .encoders import load_encoder
from .errors import ImageError, MMSearchError
from .indexer.build import build_index
from .query import Hit, Index, open_index, search
from .types import Item, Query

__all__ = [
    "Hit",
    "ImageError",
    "Index",
    "Item",
    "MMSearchError",
    "Query",
    "__version__",
    "build_index",
    "load_encoder",
    "open_index",
    "search",
]
