"""The job record of an index (``manifest.json`` → ``"job"``): what made it.

A build is identified by its sources and by the settings that shape its rows; the
model is the manifest's own ``model`` record. Rerunning the same job resumes it; a
build of another job into the same folder is refused (`job_differences` says why).

Each source is recorded as given and resolved, with a cheap, robust fingerprint:

    file     size in bytes, mtime (informative only: a copy or `touch` changes it) and
             the sha256 of its first and last MiB (with the size) -- ``"ends_sha256"``
    folder   the number of files and bytes, and the sha256 of the sorted list of
             (relative path, size) of the files a folder source can read --
             ``"listing_sha256"``; hidden entries and the index folder itself are left out

A fingerprint is compared on size and hashes, never on mtime. `index add` lists what it
appended under ``"added"`` (sources with fingerprints, time); that is not part of the
identity: the build that made the index still resumes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, Iterable, List, Optional, Sequence

from .durable import utc_now
from .layout import PathLike

JOB_VERSION = 1
END_BYTES = 1 << 20  # hash this much at each end of a file
# Files a folder source can read: images, their sidecars, PDFs.
FOLDER_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                               ".txt", ".json", ".pdf"})


def fingerprint_source(path: PathLike, exclude: Optional[PathLike] = None) -> dict:
    """The record of one source path: as given, resolved, and its fingerprint.
    `exclude`: a folder left out of a folder's listing (the index being built)."""
    given = os.fspath(path)
    resolved = os.path.realpath(given)
    record: dict = {"path": given, "resolved": resolved}
    try:
        if os.path.isdir(resolved):
            record.update(kind="folder", **_folder_print(resolved, exclude))
        else:
            st = os.stat(resolved)
            record.update(kind="file", bytes=st.st_size, mtime=round(st.st_mtime, 3),
                          ends_sha256=_ends_sha256(resolved, st.st_size))
    except OSError as exc:  # the source's reader reports it; the record says what it saw
        record.update(kind="unreadable", error=f"{type(exc).__name__}: {exc.strerror or exc}")
    return record


def _ends_sha256(path: str, size: int) -> str:
    h = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        h.update(fh.read(END_BYTES))
        if size > END_BYTES:
            fh.seek(max(END_BYTES, size - END_BYTES))
            h.update(fh.read(END_BYTES))
    return h.hexdigest()


def _folder_print(root: str, exclude: Optional[PathLike]) -> dict:
    skip = os.path.realpath(os.fspath(exclude)) if exclude is not None else None
    listing = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) != skip)
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in FOLDER_EXTENSIONS:
                continue
            full = os.path.join(folder, name)
            try:
                size = os.stat(full).st_size
            except OSError:
                size = -1
            listing.append((os.path.relpath(full, root).replace(os.sep, "/"), size))
    listing.sort()
    h = hashlib.sha256()
    for rel, size in listing:
        h.update(f"{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
    return {"files": len(listing), "bytes": sum(max(s, 0) for _, s in listing), "listing_sha256": h.hexdigest()}


def job_record(sources: Sequence[PathLike], settings: Mapping[str, Any], exclude: Optional[PathLike] = None) -> dict:
    """The job record of a build of `sources` with `settings` (JSON values)."""
    return {"version": JOB_VERSION, "created": utc_now(),
            "sources": [fingerprint_source(s, exclude) for s in sources], "settings": dict(settings)}


_PRINT_KEYS = ("kind", "bytes", "files", "ends_sha256", "listing_sha256")


def _show(paths: Iterable[str]) -> str:
    return ", ".join(paths) or "none"


def _source_changes(old: dict, new: dict) -> Optional[str]:
    if any(old.get(k) != new.get(k) for k in _PRINT_KEYS):
        what = []
        if old.get("kind") != new.get("kind"):
            what.append(f"was a {old.get('kind')}, now a {new.get('kind')}")
        elif old.get("bytes") != new.get("bytes"):
            what.append(f"{old.get('bytes')} -> {new.get('bytes')} bytes")
        if old.get("files") != new.get("files") and new.get("kind") == "folder":
            what.append(f"{old.get('files')} -> {new.get('files')} files")
        return f"source {new['path']} changed since the index was built ({', '.join(what) or 'content differs'})"
    return None


def job_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> List[str]:
    """What differs between the recorded job and the wanted one ([] for the same job):
    the set of resolved source paths, each source's fingerprint, and each setting."""
    old = {s["resolved"]: s for s in recorded.get("sources", ())}
    new = {s["resolved"]: s for s in wanted.get("sources", ())}
    diffs = []
    if set(old) != set(new):
        diffs.append(f"sources: the index was built from {_show(s['path'] for s in old.values())}; "
                     f"this run reads {_show(s['path'] for s in new.values())}")
    else:
        diffs += [d for d in (_source_changes(old[p], new[p]) for p in new) if d]
    was, now = dict(recorded.get("settings", {})), dict(wanted.get("settings", {}))
    for key in sorted(set(was) & set(now)):  # a setting an older record lacks is not a difference
        if was[key] != now[key]:
            diffs.append(f"{key}: the index has {was[key]!r}, this run {now[key]!r}")
    return diffs


def legacy_differences(recorded_paths: Optional[Sequence[str]], sources: Sequence[PathLike]) -> List[str]:
    """For an index without a job record: the sources listed in its manifest (as given,
    relative to the directory it was built from, which is unknown: compared as given and
    made absolute here) against this run's."""
    if recorded_paths is None:
        return ["sources: the index records none (built by an older mmsearch)"]
    given = [os.fspath(s) for s in sources]
    if sorted(map(str, recorded_paths)) == sorted(given):
        return []
    if sorted(os.path.abspath(p) for p in recorded_paths) == sorted(os.path.abspath(p) for p in given):
        return []
    return [f"sources: the index was built from {_show(map(str, recorded_paths))}; this run reads {_show(given)}"]
