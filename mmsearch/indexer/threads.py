"""The thread budget of a local indexing run: decode workers + torch threads <= cores.

torch's intra-op threads (OpenMP) wait for each other at every operator; a
decode thread that takes one of their cores stalls all of them, so the model
runs slower inside a pipeline than alone. The budget therefore splits the
cores this process may run on (its CPU affinity, not the machine's count)
between the two and never hands out more threads than cores. Decoding small
images costs a few percent of a forward pass: on one or two cores the model
keeps every core and the encoder thread decodes between its batches.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from ..errors import InputError

CORES_PER_WORKER = 8  # an automatic budget gives decoding one core in this many (at least one, from 3 cores)


@dataclass(frozen=True)
class ThreadBudget:
    cores: int
    decode_workers: int            # 0: the encoder thread decodes between batches
    torch_threads: int
    asked: Optional[int] = None    # the workers the run asked for, when it did

    def describe(self) -> str:
        decode = (f"{self.decode_workers} decode worker{'s' if self.decode_workers > 1 else ''}"
                  if self.decode_workers else "decoding in the encoder thread")
        note = ""
        if self.asked is not None and self.asked != self.decode_workers:
            note = f" (asked for {self.asked} workers; torch keeps at least one core)"
        return f"threads: {self.cores} cores -> torch {self.torch_threads}, {decode}{note}"


def available_cores() -> int:
    """The cores this process may run on (its affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def plan_threads(cores: int, workers: Optional[int] = None) -> ThreadBudget:
    """Split `cores` between decode workers and torch. `workers` None picks them; an
    explicit count is honoured up to `cores - 1`, so torch always has a core."""
    if not isinstance(cores, int) or cores < 1:
        raise InputError(f"cores must be a positive integer, got {cores!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise InputError(f"workers must be None (automatic) or an integer >= 0, got {workers!r}")
    wanted = workers if workers is not None else (0 if cores <= 2 else max(1, cores // CORES_PER_WORKER))
    decode = min(wanted, cores - 1)
    return ThreadBudget(cores=cores, decode_workers=decode, torch_threads=cores - decode, asked=workers)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block, then restored (a process-wide setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
