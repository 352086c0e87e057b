"""Data order and contrastive batches.

The order is a pure function of the seed: epoch e visits the examples in the
permutation `default_rng([seed, e])`, cut into batches of `batch_size` (the last
partial batch is dropped, so every batch has the same number of negatives).
Micro-batch m is therefore known from m alone, and a resumed run continues with
exactly the batches an uninterrupted one would have seen. With `groups` (each
example's dataset), every batch comes from one dataset, so in-batch negatives
are of the same task: each dataset's permutation is cut into batches, and the
epoch's batches are then shuffled together, so datasets interleave by size.

A batch holds the queries, their positives (candidate i is query i's positive),
then the hard negatives (from the data, then mined), all sharing one candidate set.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..encoders.base import Request
from ..errors import ImageError, InputError
from ..images import load_image
from .data import Example, Side

log = logging.getLogger("mmsearch.train")


class DataOrder:
    def __init__(self, n_examples: int, batch_size: int, seed: int, groups: Optional[Sequence[str]] = None):
        if n_examples < batch_size:
            raise InputError(f"batch_size={batch_size} is larger than the {n_examples} usable training examples; "
                             f"lower the batch size")
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.groups = None
        if groups is not None:
            names, labels = np.unique(np.asarray(list(groups), dtype=str), return_inverse=True)
            members = [np.flatnonzero(labels == g) for g in range(len(names))]
            small = [f"{names[g]} ({len(m)})" for g, m in enumerate(members) if len(m) < batch_size]
            if len(small) == len(members):
                raise InputError(f"per-dataset batches: every dataset has fewer than batch_size={batch_size} "
                                 f"examples: {', '.join(small)}")
            if small:
                log.warning("per-dataset batches: left out (fewer than %d examples): %s", batch_size, ", ".join(small))
            self.groups = [m for m in members if len(m) >= batch_size]
        self.per_epoch = (sum(len(m) // batch_size for m in self.groups) if self.groups is not None
                          else n_examples // batch_size)
        self._epoch: Tuple[int, Optional[list]] = (-1, None)

    def _batches(self, epoch: int) -> list:
        rng = np.random.default_rng([self.seed, epoch])
        if self.groups is None:
            perm = rng.permutation(self.n)
            return [perm[b * self.batch_size:(b + 1) * self.batch_size] for b in range(self.per_epoch)]
        batches, size = [], self.batch_size
        for members in self.groups:
            perm = members[rng.permutation(len(members))]
            batches += [perm[b * size:(b + 1) * size] for b in range(len(perm) // size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, m: int) -> Tuple[int, np.ndarray]:
        """(epoch, example indices) of micro-batch number m (0-based, over the whole run)."""
        epoch, b = divmod(m, self.per_epoch)
        if self._epoch[0] != epoch:
            self._epoch = (epoch, self._batches(epoch))
        return epoch, self._epoch[1][b]


class ImageCache:
    """Decoded RGB training images, least recently used dropped beyond `max_bytes`."""

    def __init__(self, max_bytes: int, max_pixels: Optional[int]):
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self._images: "OrderedDict[str, object]" = OrderedDict()
        self._bytes = 0

    def get(self, path: str):
        image = self._images.get(path)
        if image is not None:
            self._images.move_to_end(path)
            return image
        image = load_image(path, max_pixels=self.max_pixels)
        size = image.width * image.height * 3
        if size <= self.max_bytes:
            self._images[path] = image
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._images.popitem(last=False)
                self._bytes -= old.width * old.height * 3
        return image


@dataclass
class Batch:
    queries: List[Request]
    candidates: List[Request]
    positives: List[Side]       # keys of the queries' positives
    candidate_keys: List[Side]
    examples: List[int]         # the queries' example indices (examples with unreadable images are left out)


MinedFn = Callable[[int, np.random.Generator], List[Side]]


def side_request(side: Side, image) -> Request:
    """An MMEB-train string holds instruction and text in one ("Represent the given image.",
    "Find it. A red bus"); given as the instruction it formats as at inference, where the
    instruction comes first (VLM2Vec: one space after the image token)."""
    return Request(text=None, image=image, instruction=side.text or None)


class BatchBuilder:
    def __init__(self, examples: Sequence[Example], images: ImageCache, data_negatives: bool,
                 mined: Optional[MinedFn] = None):
        self.examples, self.images = examples, images
        self.data_negatives, self.mined = data_negatives, mined
        self.bad: set = set()

    def request(self, side: Side) -> Request:
        return side_request(side, self.images.get(side.image) if side.image is not None else None)

    def _negatives(self, i: int, rng: np.random.Generator) -> List[Side]:
        ex = self.examples[i]
        negs = [ex.negative] if (self.data_negatives and ex.negative is not None) else []
        return negs + (self.mined(i, rng) if self.mined is not None else [])

    def build(self, indices: Sequence[int], rng: np.random.Generator) -> Batch:
        queries, positives, negatives, keys, neg_keys, kept = [], [], [], [], [], []
        for i in indices:
            i = int(i)
            try:
                ex = self.examples[i]
                q, p = self.request(ex.query), self.request(ex.positive)
                negs = [(n, self.request(n)) for n in self._negatives(i, rng)]
            except ImageError as e:
                if i not in self.bad:
                    self.bad.add(i)
                    log.warning("training example %d left out of its batches: %s", i, e)
                continue
            queries.append(q)
            positives.append(p)
            keys.append(ex.positive)
            kept.append(i)
            negatives += [r for _, r in negs]
            neg_keys += [n for n, _ in negs]
        return Batch(queries, positives + negatives, keys, keys + neg_keys, kept)
