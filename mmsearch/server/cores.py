"""Sizing the search threads' torch to the cores.

Each of `Limits.threads` search threads runs the encoder with torch's intra-op pool,
which by default has one OpenMP thread per core. Two search threads on two cores then
run four busy OpenMP threads, whose spinning waits also take the core the event loop
needs: measured here with the tiny model under 20 clients, a query took several times
longer than alone. So the search threads share the cores: each gets cores // threads.
"""
from __future__ import annotations

import os
from typing import Optional


def available_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def torch_threads_per_search(search_threads: int, cores: int) -> int:
    """Intra-op threads for each search thread, so that together they fill the cores."""
    return max(1, cores // search_threads)


def torch_threads() -> Optional[int]:
    """The calling thread's torch intra-op threads (None without torch)."""
    try:
        import torch
    except ImportError:  # an encoder without torch
        return None
    return torch.get_num_threads()


def use_torch_threads(n: Optional[int]) -> None:
    """Give the calling thread `n` torch intra-op threads (None or no torch: nothing).
    torch also keeps the number for threads started later, process-wide: a server
    sets it when its search threads start and puts it back when it closes."""
    if n is None:
        return
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(n)
