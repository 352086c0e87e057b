"""The data model: what gets indexed (`Item`) and what gets asked (`Query`).

An image is given as a path (str or os.PathLike), raw bytes, or a PIL image;
it is decoded only when needed, by `mmsearch.images.load_image`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from PIL import Image as _PILImage

ImageLike = Union[str, os.PathLike, bytes, bytearray, _PILImage.Image]

# --- the modality vocabulary (defined here only) ---------------------------------------
#
# An input's modality follows M-BEIR: "text", "image", "image,text". An indexed item is
# one of those or a "page": a rendered document page (a PDF page), embedded as a
# screenshot; its extracted text is kept for display but is not embedded.
#
# Filters match the modality column two ways (see `mmsearch.query.filters`):
#   {"modality": "image"}            exactly image (stored string equality)
#   {"modality": {"has": "image"}}   any item holding an image: image, image,text, page
#   {"modality": {"has": "text"}}    any item whose embedded content has text: text, image,text
#
# Indexes built before "page" existed stored pages as "image"; a row stored as "image"
# that carries both the `page` and `pages` metadata columns (what `is_page` looked for
# when it was built) reads as "page" (`stored_modality` / `mmsearch.query.modality`).
TEXT, IMAGE, IMAGE_TEXT, PAGE = "text", "image", "image,text", "page"
MODALITIES = (TEXT, IMAGE, IMAGE_TEXT)             # what a query or an M-BEIR entry can be
ITEM_MODALITIES = (TEXT, IMAGE, IMAGE_TEXT, PAGE)  # what an index row can be
PARTS = ("text", "image")                          # what {"has": ...} may name
_HAS = {TEXT: ("text",), IMAGE: ("image",), IMAGE_TEXT: ("image", "text"), PAGE: ("image",)}
PAGE_KEYS = ("page", "pages")  # metadata of a rendered document page (PdfSource)


def modality_has(modality: str, part: str) -> bool:
    """Whether an item of this modality holds `part` ("text" or "image")."""
    return part in _HAS.get(modality, ())


def modalities_with(*parts: str) -> tuple:
    """The item modalities holding every one of `parts` (in vocabulary order)."""
    return tuple(m for m in ITEM_MODALITIES if all(modality_has(m, p) for p in parts))


def is_page(image: Any, metadata: Mapping[str, Any]) -> bool:
    """A rendered document page: an image with `page` and `pages` metadata (PdfSource)."""
    return image is not None and all(metadata.get(k) is not None for k in PAGE_KEYS)


def stored_modality(modality: Optional[str], metadata: Mapping[str, Any]) -> Optional[str]:
    """A row's modality as the vocabulary names it: a page of an index from before
    "page" existed (stored as "image" with `page` and `pages`) is a "page"."""
    if modality == IMAGE and all(metadata.get(k) is not None for k in PAGE_KEYS):
        return PAGE
    return modality


def modality_of(text: Optional[str], image: Optional[ImageLike]) -> str:
    """M-BEIR modality string of an input with this text and image."""
    has_text, has_image = bool(text), image is not None
    if has_image and has_text:
        return IMAGE_TEXT
    if has_image:
        return IMAGE
    if has_text:
        return TEXT
    return ""


@dataclass(frozen=True, eq=False)
class Item:
    """One corpus entry: a stable id, optional text, optional image, free metadata."""

    id: str
    text: Optional[str] = None
    image: Optional[ImageLike] = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return modality_of(self.text, self.image)


@dataclass(frozen=True, eq=False)
class Query:
    """A search request: text, an image, or both (composed: "this, but red").

    `instruction` (free text) or `task` (a name from the task library) selects
    the VLM2Vec query instruction; an explicit instruction wins.
    """

    text: Optional[str] = None
    image: Optional[ImageLike] = None
    instruction: Optional[str] = None
    task: Optional[str] = None

    @property
    def modality(self) -> str:
        return modality_of(self.text, self.image)
