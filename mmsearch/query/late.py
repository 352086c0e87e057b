"""Late interaction: the second stage of a multi-vector index's search.

The FAISS index holds one MUVERA FDE per item (`encoders.fde`), so the ANN search returns
the items whose FDE is closest to the query's; `MaxSim` rescores the best `depth` of them by
exact MaxSim between the query's token vectors and each candidate's stored ones (shard
`tokens.npy`, memory-mapped; one matmul per block of candidates, `multivector.maxsim`), and
re-sorts them. `Index.search` puts it first in the rerank chain of every multi-vector index,
so filters and deletions, already applied by the ANN stage, hold; later stages (hubness,
a VLM judge) see MaxSim-ordered candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmsearch.errors import InputError
from mmsearch.multivector import map_queries, match_heat

from .rerank_context import RerankContext, Result, sort_result


@dataclass(frozen=True)
class MaxSim:
    """Exact MaxSim over the stored token vectors of the best `depth` FDE candidates."""

    depth: int
    name = "maxsim"

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise InputError(f"multi-vector candidates={self.depth!r}: expected an int >= 1")

    def candidates(self, k: int) -> int:
        return max(k, self.depth)

    def rerank(self, ctx: RerankContext, D: np.ndarray, I: np.ndarray) -> Result:
        if ctx.query_tokens is None:
            raise InputError("MaxSim reranking needs the queries' token vectors: search a multi-vector index with "
                             "queries (text or images), not precomputed vectors")
        scores = np.full(I.shape, -np.inf, dtype=np.float32)

        def score(q: int) -> None:
            valid = I[q] >= 0
            if valid.any():
                scores[q, valid] = ctx.view.maxsim(ctx.query_tokens[q], I[q][valid])

        map_queries(score, len(I))  # queries side by side on the cores
        return sort_result(scores, I, keep_max=True)


def match_map(view, encoder, query: Any, row: int, record: dict) -> dict:
    """Where on the page of global `row` (its meta `record`) `query` matched: the MaxSim
    argmax heat on the page's patch grid (`multivector.match_heat`), from the stored tokens.
    Returns {"grid": [rows, cols], "heat": row-major floats, "outside": the score share of
    prompt tokens, "score": MaxSim}."""
    image = view.candidate_image(record)
    if image is None:
        raise InputError(f"item {record['id']!r} has no page image to map matches onto")
    patch_rows, grid = encoder.patch_grid(image)
    page = view.token_matrix(row)
    if patch_rows.max() >= len(page):
        raise InputError(f"item {record['id']!r}: its image now gives {patch_rows.max() + 1}+ tokens, the index "
                         f"stored {len(page)} (the image file changed since it was indexed?)")
    _, tokens = encoder.encode_requests_with_tokens(encoder.to_requests([query]))
    heat, outside = match_heat(tokens[0], page, patch_rows, grid)
    return {"grid": list(grid), "heat": heat.ravel().round(5).tolist(), "outside": round(outside, 5),
            "score": round(float(heat.sum()) + outside, 5)}
