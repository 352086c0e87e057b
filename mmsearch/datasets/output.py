"""Writing a collection's files: images (each rendered once), JSON lines, text, tables.

Everything is written in a fixed order with fixed settings, so the same collection
gives byte-identical files (PNG carries no timestamp; JSON keys keep their order).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import InputError
from .collection import Picture
from .docs import render_page
from .options import SyntheticOptions

Progress = Callable[[int, int], None]  # (done, total)


class Output:
    """A collection root being written; counts files and reports progress per image."""

    def __init__(self, root: Path, options: SyntheticOptions, progress: Optional[Progress] = None):
        self.root = root
        self.options = options
        self.progress = progress
        self.files = 0
        self.images = 0

    def path(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_pictures(self, items: Sequence[Tuple[Picture, str]]) -> None:
        """Render and save each (picture, relative path) once, reporting progress."""
        from .scenes import render_scene

        todo = list(dict.fromkeys(items))
        for done, (picture, rel) in enumerate(todo, 1):
            if picture.scene is not None:
                img = render_scene(picture.scene, self.options.image_size)
            else:
                img = render_page(picture.page, self.options.page_size, self.options.doc)
            img.save(self.path(rel), format="PNG", compress_level=3)
            self.images += 1
            self.files += 1
            if self.progress is not None:
                self.progress(done, len(todo))

    def write_text(self, rel: str, text: str) -> None:
        self.path(rel).write_text(text, encoding="utf-8", newline="\n")
        self.files += 1

    def write_jsonl(self, rel: str, rows: Iterable[dict]) -> None:
        self.write_text(rel, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def write_table(self, stem: str, rows: List[dict], schema: Dict[str, str]) -> str:
        """``stem``.parquet or ``stem``.jsonl, as the options say; returns the relative path."""
        if self.options.table == "jsonl":
            self.write_jsonl(stem + ".jsonl", rows)
            return stem + ".jsonl"
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"string": pa.string(), "strings": pa.list_(pa.string())}
        arrow_schema = pa.schema([(name, types[kind]) for name, kind in schema.items()])
        table = pa.Table.from_pylist(rows, schema=arrow_schema)
        pq.write_table(table, self.path(stem + ".parquet"), compression="zstd")
        self.files += 1
        return stem + ".parquet"


def prepare_root(root: Path, owned: Sequence[str], overwrite: bool) -> None:
    """Create ``root``; it must be empty unless ``overwrite``, which removes only the
    entries this layout writes (``owned``) and leaves anything else alone."""
    if root.exists() and not root.is_dir():
        raise InputError(f"output {root} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise InputError(f"output directory {root} is not empty; choose a new directory "
                             "or pass overwrite=True (--overwrite) to replace a previous collection")
        for name in owned:
            target = root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                os.remove(target)
    root.mkdir(parents=True, exist_ok=True)
