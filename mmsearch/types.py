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

# Modality names follow M-BEIR: "text", "image", "image,text".
TEXT, IMAGE, IMAGE_TEXT = "text", "image", "image,text"
MODALITIES = (TEXT, IMAGE, IMAGE_TEXT)


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
