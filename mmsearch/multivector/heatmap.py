"""Which parts of a page a query matched: MaxSim's argmax, laid out on the page's patch grid.

MaxSim scores a page by giving every query token its best-matching page token. Crediting each
query token's similarity to the token it picked, and placing the page's image-patch tokens on
their grid, shows where on the page the score came from (the ColPali papers' interpretability
maps). Tokens of the prompt around the image get no cell; their share is reported apart.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def match_heat(query_tokens: np.ndarray, page_tokens: np.ndarray, patch_rows: np.ndarray,
               grid: Tuple[int, int]) -> Tuple[np.ndarray, float]:
    """(heat `(rows, cols)` float32, the MaxSim share of non-patch tokens). Cell (r, c) holds the
    summed similarity of the query tokens whose best page token is patch r * cols + c, i.e.
    `patch_rows[r * cols + c]` among the page's token vectors; the heat and the share sum to the
    page's MaxSim score."""
    rows, cols = grid
    patch_rows = np.asarray(patch_rows, dtype=np.int64)
    if len(patch_rows) != rows * cols:
        raise ValueError(f"{len(patch_rows)} patch tokens cannot tile a {rows} x {cols} grid")
    if len(patch_rows) and patch_rows.max() >= len(page_tokens):
        raise ValueError(f"patch token rows reach {patch_rows.max()}, the page has {len(page_tokens)} tokens")
    sim = np.asarray(query_tokens, np.float32) @ np.asarray(page_tokens, np.float32).T
    best, score = sim.argmax(axis=1), sim.max(axis=1)
    cell = np.full(len(page_tokens), -1, dtype=np.int64)
    cell[patch_rows] = np.arange(len(patch_rows))
    on_patch = cell[best] >= 0
    heat = np.bincount(cell[best][on_patch], weights=score[on_patch], minlength=rows * cols)
    return heat.reshape(rows, cols).astype(np.float32), float(score[~on_patch].sum())
