"""mmsearch: multimodal vector search with VLM2Vec embeddings.

The public API (DESIGN.md §2). Everything else is reachable through the
subpackages but is not part of the contract.

The front door is lazy (PEP 562): `import mmsearch` loads the types and errors
only; torch, transformers, faiss, the indexer and the query engine load when a
name that needs them is first used.
"""
from ._lazy import lazy_attributes
from ._version import __version__
from .errors import ImageError, MMSearchError
from .types import Item, Query

# public name -> the module that defines it (imported on first use)
_LAZY = {
    "Hit": "mmsearch.query",
    "Index": "mmsearch.query",
    "build_index": "mmsearch.indexer.build",
    "load_encoder": "mmsearch.encoders",
    "open_index": "mmsearch.query",
    "search": "mmsearch.query",
}

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


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
