"""Distillation from a frozen teacher: keep one skill while the model learns others.

Fine-tuning on new tasks overwrites what a small model knew (catastrophic
forgetting: mmsearch-tiny read pages at R@1 0.62, and fell to 0.25 while it
learnt the scenes beside them). Learning without forgetting (Li & Hoiem, 2016),
as embedding matching: the rows of the chosen tables keep their teacher's
embeddings. For every such row's query and positive the loss gains
`weight * (1 - cos(student, teacher))`, averaged over those sides; the teacher
(any encoder with the student's dimension, e.g. the model before this stage)
embeds them without gradients, batch by batch.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from .batches import Batch
from .data import Example


@dataclass
class Targets:
    rows: torch.Tensor      # positions of the distilled rows among the batch's queries (= their positives)
    queries: torch.Tensor   # (len(rows), dim) teacher embeddings of those queries
    positives: torch.Tensor


class Distiller:
    def __init__(self, teacher, weight: float, chosen: Sequence[bool], chunk_size: Optional[int] = None,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext):
        self.teacher, self.weight = teacher, weight
        self.chosen = np.asarray(chosen, dtype=bool)
        self.chunk_size, self.autocast = chunk_size, autocast
        self._window: List[float] = []

    @classmethod
    def create(cls, source: str, weight: float, tables: Sequence[str], examples: Sequence[Example], student,
               chunk_size: Optional[int], autocast) -> "Distiller":
        """Load the teacher `source` onto the student's device; distil the examples of
        `tables` (all of them when empty)."""
        from ..encoders import load_encoder

        teacher = load_encoder(source, device=str(student.device))
        if teacher.dim != student.dim:
            raise InputError(f"distillation teacher {source!r} embeds in {teacher.dim} dimensions, the model being "
                             f"trained in {student.dim}; they must match")
        wanted = {str(Path(t)) for t in tables}
        chosen = [not wanted or ex.table in wanted for ex in examples]
        return cls(teacher, weight, chosen, chunk_size, autocast)

    @property
    def fraction(self) -> float:
        """The share of training examples that are distilled."""
        return float(self.chosen.mean()) if len(self.chosen) else 0.0

    def targets(self, batch: Batch) -> Optional[Targets]:
        """The teacher's embeddings of the batch's distilled queries and positives (None: none in it)."""
        rows = [r for r, i in enumerate(batch.examples) if self.chosen[i]]
        if not rows:
            return None
        requests = [batch.queries[r] for r in rows] + [batch.candidates[r] for r in rows]
        with self.autocast():
            emb = self.teacher.encode_requests(requests, batch_size=self.chunk_size or len(requests),
                                               show_progress=False)
        emb = torch.from_numpy(emb)
        return Targets(torch.tensor(rows), emb[:len(rows)], emb[len(rows):])

    def loss(self, q: torch.Tensor, c: torch.Tensor, targets: Targets) -> torch.Tensor:
        """weight * mean(1 - cos) over the distilled queries and positives (rows are L2-normalised)."""
        student = torch.cat([q[targets.rows], c[targets.rows]]).float()
        teacher = torch.cat([targets.queries, targets.positives]).to(student.device)
        term = self.weight * (1.0 - (student * teacher).sum(-1)).mean()
        self._window.append(float(term.detach()))
        return term

    def flush(self) -> Optional[float]:
        """Mean distillation term since the last call (None: no distilled rows since)."""
        out = float(np.mean(self._window)) if self._window else None
        self._window = []
        return out
