"""One writer per index folder, and wiping what an index consists of."""
from __future__ import annotations

import fcntl
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mmsearch.errors import MMSearchError

from .layout import FORMAT_FILES, PathLike, lock_path


@contextmanager
def writer_lock(index_dir: PathLike) -> Iterator[Path]:
    """Hold the index's writer lock (creating the folder): a second build/add/delete on the
    same folder fails fast with MMSearchError instead of interleaving writes. The lock is
    an flock, released when the block ends or the process dies."""
    out = Path(index_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(lock_path(out), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MMSearchError(f"{out} is being written by another mmsearch process") from None
        yield out


def wipe_index(index_dir: PathLike) -> None:
    """--overwrite: remove what an index consists of, nothing else the folder may hold.
    Call it while holding `writer_lock`."""
    out = Path(index_dir)
    for name in FORMAT_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
