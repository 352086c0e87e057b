"""The decode stage: one source `Record` -> a `Prepared` item ready to encode, or a `Rejection`.

Runs in the worker pool, so it holds everything that is slow per item and
independent of the model: image decoding and checks, the content hash that
keys the embedding cache, and the thumbnail.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

from ..encoders.base import Request
from ..errors import MMSearchError
from ..images import image_fingerprint, load_image, make_thumbnail
from ..types import PAGE, Item
from ..types import is_page as _is_page
from .sources import Record

RESERVED = ("id", "modality", "text", "image")
THUMBNAIL_SIDE = 256


@dataclass(frozen=True)
class Rejection:
    id: Optional[str]
    where: str
    reason: str

    def to_json(self) -> dict:
        return {"id": self.id, "source": self.where, "reason": self.reason}


@dataclass(frozen=True, eq=False)
class Prepared:
    item: Item
    where: str
    request: Request
    modality: str            # what meta.arrow records: text, image, image,text, page
    instruction_key: str     # which candidate instruction applies: a modality or "page"
    content_hash: str        # sha256 of what the model sees (text + image content)
    image_ref: Optional[str]
    thumbnail: Optional[bytes]
    metadata: Mapping[str, Any]


def is_page(item: Item) -> bool:
    """A rendered document page (PdfSource): encoded as a screenshot, its text kept as metadata;
    stored with modality "page" (`mmsearch.types`)."""
    return _is_page(item.image, item.metadata)


def _image_ref(item: Item, where: str) -> Optional[str]:
    if item.image is None:
        return None
    if isinstance(item.image, (str, os.PathLike)):
        return os.fspath(item.image)
    return where  # bytes or a rendered page: the source location is the reference


def clean_metadata(item: Item, modality: str) -> Dict[str, Any]:
    """Metadata as Arrow can hold it: scalars kept, containers as JSON text; a key that
    clashes with a reserved column is dropped when it just repeats it, else prefixed."""
    out: Dict[str, Any] = {}
    reserved = {"id": item.id, "modality": modality, "text": item.text}
    for key, value in item.metadata.items():
        key = str(key)
        if key in RESERVED:
            if reserved.get(key) == value:
                continue
            key = f"meta_{key}"
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
        elif not (value is None or isinstance(value, (str, int, float, bool))):
            value = str(value)
        out[key] = value
    return out


def content_hash(text: Optional[str], image) -> str:
    h = hashlib.sha256()
    h.update((text or "").encode("utf-8"))
    h.update(b"\x00")
    if image is not None:
        h.update(image_fingerprint(image).encode())
    return h.hexdigest()


def prepare(record: Record, instructions: Mapping[str, str], max_pixels: Optional[int],
            thumbnails: bool) -> Union[Prepared, Rejection]:
    """Decode and check one record. Never raises for bad input: returns a Rejection."""
    if record.item is None:
        return Rejection(record.id, record.where, record.error or "unreadable entry")
    item = record.item
    try:
        return _prepare(item, record.where, instructions, max_pixels, thumbnails)
    except MMSearchError as e:
        return Rejection(item.id, record.where, str(e))
    except Exception as e:  # a decoder bug on hostile input must not kill the run
        return Rejection(item.id, record.where, f"{type(e).__name__}: {e}")


def _prepare(item: Item, where: str, instructions, max_pixels, thumbnails) -> Union[Prepared, Rejection]:
    page = is_page(item)
    text = None if page else (item.text or None)
    if text is None and item.image is None:
        return Rejection(item.id, where, "empty item: no text and no image")
    image = None
    if item.image is not None:
        image = load_image(item.image, max_pixels=max_pixels, source=f"item {item.id!r} ({where})")
    modality = PAGE if page else item.modality
    key = "page" if page else modality
    instruction = instructions.get(key, instructions.get("default", ""))
    thumb = make_thumbnail(image, THUMBNAIL_SIDE) if (thumbnails and image is not None) else None
    return Prepared(
        item=item, where=where, request=Request(text=text, image=image, instruction=instruction or None,
                                                  side="candidate"),
        modality=modality, instruction_key=key,
        content_hash=content_hash(text, item.image),
        image_ref=_image_ref(item, where), thumbnail=thumb, metadata=clean_metadata(item, modality),
    )
