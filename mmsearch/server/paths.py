"""How the server shows file paths: never as absolute paths of the server's files.

An item's ``image`` reference (a file, or a source location such as ``doc.pdf#p3``) is
shown relative to the folder of the index source it came from (the folder of a
JSONL/CSV/PDF file, or the folder given as source), which is how the user wrote it in
the source; a path under none of them is shown as its file name. Other string
metadata that starts with one of those folders (or the index folder) is shown
relative to it. The picture itself is served by ``/items/{id}/thumbnail``.
"""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
KEEP = ("text",)  # user content, shown as it is


def is_absolute(ref: str) -> bool:
    return ref.startswith(("/", "\\")) or bool(_DRIVE.match(ref))


def _folders(entry: Any) -> List[str]:
    """The folder(s) a recorded source names: a file's parent, a folder itself (both as
    given and resolved)."""
    out = []
    for p in ([entry] if isinstance(entry, str) else
              [entry.get(k) for k in ("path", "resolved")] if isinstance(entry, Mapping) else []):
        if not isinstance(p, str) or not p:
            continue
        p = p.split("#")[0]
        for path in (Path(p), Path(os.path.realpath(p))):
            out.append(str(path if path.is_dir() else path.parent))
    return out


class PathView:
    """Rewrites absolute paths under known `roots` to relative ones, others to file names."""

    def __init__(self, roots: Iterable[str]):
        cleaned = {r.rstrip("/\\") for r in roots if isinstance(r, str) and is_absolute(r) and r.strip("/\\")}
        self.roots = sorted(cleaned, key=len, reverse=True)  # the deepest folder first

    @classmethod
    def of_index(cls, index: Any) -> "PathView":
        """The roots of an open `Index`: its sources' folders (as the manifest records
        them), ``extra["image_root"]``, and the index folder."""
        m = index.manifest
        extra = m.extra if isinstance(getattr(m, "extra", None), Mapping) else {}
        job = getattr(m, "job", None)
        job_sources = job.get("sources") if isinstance(job, Mapping) else getattr(job, "sources", None)
        roots: List[str] = []
        for entry in list(extra.get("sources") or []) + list(job_sources or []):
            if not isinstance(entry, (str, Mapping)) and hasattr(entry, "path"):
                entry = {"path": getattr(entry, "path", None), "resolved": getattr(entry, "resolved", None)}
            roots += _folders(entry)
        image_root = extra.get("image_root")
        for path in ([str(image_root)] if image_root else []) + [str(index.path)]:
            roots += [str(Path(path).absolute()), os.path.realpath(path)]
        return cls(roots)

    def show(self, ref: Optional[str]) -> Optional[str]:
        """A reference as clients see it: relative to its root, else its file name."""
        if not isinstance(ref, str) or not is_absolute(ref):
            return ref
        rel = self._relative(ref)
        if rel is not None:
            return rel
        return posixpath.basename(ref.replace("\\", "/")) or "(file)"

    def _relative(self, value: str) -> Optional[str]:
        for root in self.roots:
            if value.startswith(root) and value[len(root):len(root) + 1] in ("/", "\\"):
                return value[len(root) + 1:].replace("\\", "/")
        return None

    def scrub(self, value: str) -> str:
        """A string with every known root prefix inside it removed (the rest made relative)."""
        for root in self.roots:
            if root in value:
                value = value.replace(root + "/", "").replace(root + "\\", "").replace(root, ".")
        return value

    def metadata(self, record: Mapping[str, Any]) -> Dict[str, Any]:
        out = {}
        for key, value in record.items():
            if key == "image":
                value = self.show(value)
            elif isinstance(value, str) and key not in KEEP:
                value = self.scrub(value)
            out[key] = value
        return out
