"""Learning-rate multipliers: linear warmup, then cosine, linear or constant decay to 0."""
from __future__ import annotations

import math
from typing import Callable


def lr_lambda(schedule: str, warmup: float, total: int) -> Callable[[int], float]:
    """The multiplier of the base lr after `step` optimizer steps (for LambdaLR).

    A plain function, so LambdaLR saves none of it: a resumed run rebuilds it from
    its own settings.
    """
    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier
