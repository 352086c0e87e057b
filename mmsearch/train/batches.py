"""Data order and contrastive batches.

The order is a pure function of the seed: epoch e visits the examples in the
permutation `default_rng([seed, e])`, cut into batches of `batch_size` (the last
partial batch is dropped, so every batch has the same number of negatives).
Micro-batch m is therefore known from m alone, and a resumed run continues with
exactly the batches an uninterrupted one would have seen.

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
    def __init__(self, n_examples: int, batch_size: int, seed: int):
        if n_examples < batch_size:
            raise InputError(f"batch_size={batch_size} is larger than the {n_examples} usable training examples; "
                             f"lower the batch size")
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.per_epoch = n_examples // batch_size
        self._perm: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def batch(self, m: int) -> Tuple[int, np.ndarray]:
        """(epoch, example indices) of micro-batch number m (0-based, over the whole run)."""
        epoch, b = divmod(m, self.per_epoch)
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return epoch, self._perm[1][b * self.batch_size:(b + 1) * self.batch_size]


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


MinedFn = Callable[[int, np.random.Generator], List[Side]]


class BatchBuilder:
    def __init__(self, examples: Sequence[Example], images: ImageCache, data_negatives: bool,
                 mined: Optional[MinedFn] = None):
        self.examples, self.images = examples, images
        self.data_negatives, self.mined = data_negatives, mined
        self.bad: set = set()

    def request(self, side: Side) -> Request:
        image = self.images.get(side.image) if side.image is not None else None
        return Request(text=side.text, image=image, instruction=None)

    def _negatives(self, i: int, rng: np.random.Generator) -> List[Side]:
        ex = self.examples[i]
        negs = [ex.negative] if (self.data_negatives and ex.negative is not None) else []
        return negs + (self.mined(i, rng) if self.mined is not None else [])

    def build(self, indices: Sequence[int], rng: np.random.Generator) -> Batch:
        queries, positives, negatives, keys, neg_keys = [], [], [], [], []
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
            negatives += [r for _, r in negs]
            neg_keys += [n for n, _ in negs]
        return Batch(queries, positives + negatives, keys, keys + neg_keys)
