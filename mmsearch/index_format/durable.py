"""Durable writes: one implementation each, reused by everything that writes to disk.

A reader sees the old or the new version of a file, never a torn one: new content
goes to a temporary sibling (its name holds `TMP_MARK`, so an interrupted write is
swept on resume), is fsynced, then renamed over the target, and the folder is fsynced.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .layout import TMP_MARK, PathLike


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so big shards do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: PathLike) -> None:
    """Flush a file that some other writer (faiss, arrow) closed to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Make renames and creations inside a directory durable (no-op where unsupported)."""
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:  # Windows cannot open a directory for fsync
        return
    fd = os.open(path, os.O_RDONLY | flag)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(name: str) -> str:
    """A unique temporary sibling name: ``<name>.tmp-<pid>-<random>``."""
    return f"{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a torn one."""
    path = Path(path)
    tmp = path.with_name(tmp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """`atomic_write_bytes` of strict JSON (no NaN), indented for people who open it."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def utc_now() -> str:
    """ISO-8601 UTC timestamp with second precision, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
