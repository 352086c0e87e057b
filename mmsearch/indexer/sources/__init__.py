"""The readers of the offline indexer.

Every source yields `Record`s lazily: an `Item` with a stable string id, or, for an
entry that cannot become one, the reason it was rejected and where it was found.
Bad input never raises here; a misconfigured source (missing path, unknown kind or
option) raises `mmsearch.errors.InputError` when it is opened. Duplicate ids are left
to the pipeline. Images are not decoded here (paths and bytes are passed on), except
PDF pages, which are rendered to PIL images.
"""
from .base import Record, Source
from .factory import KINDS, detect_kind, iter_sources, open_source
from .folder import FolderSource
from .manifest import CsvSource, JsonlSource, ParquetSource
from .mbeir import MBeirSource
from .pdf import PdfSource
from .webdataset import WebDatasetSource

__all__ = [
    "Record", "Source", "KINDS", "detect_kind", "open_source", "iter_sources",
    "FolderSource", "JsonlSource", "CsvSource", "ParquetSource", "MBeirSource", "PdfSource",
    "WebDatasetSource",
]
