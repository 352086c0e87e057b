"""Seeded synthetic pages of token vectors with structure, for tests and benchmarks.

Pure Gaussian token sets make every MaxSim score alike, so a ranking test on them is either
trivial or noise. Here, as with real page embeddings, each page's tokens gather around a few
dozen "concepts" drawn from a shared vocabulary (pages share concepts, so there are hard
negatives), plus shared "background" tokens (blank margins look alike on every page); a
query is a noisy sample of one page's concepts. All vectors are L2-normalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PageModel:
    dim: int = 128
    vocabulary: int = 2048          # concepts shared by all pages
    concepts_per_page: int = 40
    background: int = 16            # tokens alike on every page
    background_share: float = 0.2
    doc_noise: float = 0.6
    query_noise: float = 0.8
    seed: int = 0

    def concepts(self) -> np.ndarray:
        """(vocabulary + background, dim): concept vectors, background ones last."""
        return _unit(np.random.default_rng(self.seed).standard_normal(
            (self.vocabulary + self.background, self.dim)).astype(np.float32))

    def page_concepts(self, pages: np.ndarray) -> np.ndarray:
        """(len(pages), concepts_per_page) concept ids of each page, a function of its id."""
        return np.stack([np.random.default_rng([self.seed, 1, int(p)]).choice(
            self.vocabulary, self.concepts_per_page, replace=False) for p in pages])

    def pages(self, first: int, lengths: np.ndarray) -> np.ndarray:
        """Tokens of pages first, first + 1, ... (`lengths[i]` tokens each), flat, float32."""
        table, ids = self.concepts(), self.page_concepts(np.arange(first, first + len(lengths)))
        rng = np.random.default_rng([self.seed, 2, first])
        owner = np.repeat(np.arange(len(lengths)), lengths)
        pick = ids[owner, rng.integers(0, self.concepts_per_page, len(owner))]
        blank = rng.random(len(owner)) < self.background_share
        pick[blank] = self.vocabulary + rng.integers(0, self.background, int(blank.sum()))
        return self._noisy(table[pick], self.doc_noise, rng)

    def queries(self, targets: np.ndarray, tokens_per_query: int, seed: int = 0) -> np.ndarray:
        """Flat `(len(targets) * tokens_per_query, dim)` query tokens, each query a noisy
        sample of its target page's concepts."""
        rng = np.random.default_rng([self.seed, 3, seed])
        ids = self.page_concepts(np.asarray(targets))
        pick = ids[np.repeat(np.arange(len(ids)), tokens_per_query),
                   rng.integers(0, self.concepts_per_page, len(ids) * tokens_per_query)]
        return self._noisy(self.concepts()[pick], self.query_noise, rng)

    def _noisy(self, base: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
        jitter = rng.standard_normal(base.shape, dtype=np.float32) * (noise / np.sqrt(self.dim))
        return _unit(base + jitter)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
