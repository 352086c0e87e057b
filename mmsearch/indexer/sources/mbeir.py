"""M-BEIR candidate pools (UniIR): JSON lines of ``did``, ``txt``, ``img_path``, ``modality``.

Image paths are relative to the M-BEIR root (the folder holding ``cand_pool/`` and
``mbeir_images/``). The declared modality is honoured: an entry must carry what its
modality names, and a part it does not name is left out of the item, so the item's
modality is the pool's.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Iterator, Optional

from mmsearch.errors import InputError
from mmsearch.types import MODALITIES, Item

from .base import Record, Rejected, clean_id, clean_text, display, make_item, reject, resolve_path, type_name
from .lines import clean_salvaged_id, json_objects, salvage_id

POOL_PATTERN = "mbeir_*cand_pool*.jsonl"


def is_mbeir_pool(path: str) -> bool:
    """Whether a file name looks like an M-BEIR candidate pool."""
    return fnmatch.fnmatch(os.path.basename(path), POOL_PATTERN)


def infer_root(path: str) -> Optional[str]:
    """The M-BEIR root of a pool stored at ``<root>/cand_pool/{local,global}/``, else None."""
    folder = os.path.dirname(os.path.abspath(path))
    parent = os.path.dirname(folder)
    if os.path.basename(folder) in ("local", "global") and os.path.basename(parent) == "cand_pool":
        return os.path.dirname(parent)
    return None


@dataclass(frozen=True)
class MBeirSource:
    """An M-BEIR candidate pool; ids are the ``did`` values."""

    path: str
    root: Optional[str] = None  # None: inferred from <root>/cand_pool/{local,global}/

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.root is None:
            root = infer_root(self.path)
            if root is None:
                raise InputError(
                    f"cannot infer the M-BEIR root of {self.path}: it is not in <root>/cand_pool/local/ "
                    "or <root>/cand_pool/global/; pass root= (the folder that holds mbeir_images/)")
            object.__setattr__(self, "root", root)
        object.__setattr__(self, "root", os.path.abspath(os.fspath(self.root)))

    def describe(self) -> str:
        return f"M-BEIR candidate pool {display(self.path)} (root {self.root})"

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def records(self, span: Optional[tuple] = None) -> Iterator[Record]:
        """The records of the lines in `span` (see `lines.json_objects`), or of the whole pool."""
        where0 = display(self.path)
        for number, entry, error in json_objects(self.path, span):
            where = f"{where0}:{number}" if number else where0
            if error is not None:
                item_id, note = salvage_id(error, "did")
                yield reject(where, error if note is None else f"{error}; {note}", item_id)
                continue
            try:
                yield Record(self._item(entry), where)
            except Rejected as exc:
                yield reject(where, str(exc), clean_salvaged_id(entry.get("did")))

    def _item(self, entry: dict) -> Item:
        did = clean_id(entry.get("did"), "did")
        text = clean_text(entry.get("txt"), "txt")
        img_path = entry.get("img_path")
        if img_path is not None and not isinstance(img_path, str):
            raise Rejected(f"img_path must be a string, got {type_name(img_path)}")
        image = resolve_path(img_path, self.root) if img_path and img_path.strip() else None
        modality = entry.get("modality")
        metadata = {}
        if modality is not None:
            text, image = _keep_declared(modality, text, image)
            metadata["modality"] = modality
        if entry.get("src_content") is not None:
            metadata["src_content"] = entry["src_content"]
        return make_item(did, text, image, metadata)


def _keep_declared(modality, text, image):
    """The (text, image) an entry of this declared modality contributes."""
    if modality not in MODALITIES:
        raise Rejected(f"unknown modality {modality!r}; M-BEIR uses {', '.join(map(repr, MODALITIES))}")
    parts = modality.split(",")
    if "text" in parts and text is None:
        raise Rejected(f"modality {modality!r} but txt is empty")
    if "image" in parts and image is None:
        raise Rejected(f"modality {modality!r} but img_path is empty")
    return (text if "text" in parts else None), (image if "image" in parts else None)
