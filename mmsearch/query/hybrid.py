"""Search modes: ``vector`` (ANN over the embeddings), ``lexical`` (BM25 over the text
fields, `query.lexical`) and ``hybrid`` (both arms, fused by `query.fusion`).

Both arms see the same allowed rows (the filter's matches minus tombstones) before
fusion, and each returns `depth` candidates: enough that a row ranked well by one arm
only still reaches the fused top k. The vector arm also scores every row the lexical arm
found beyond its window (every row has a vector score; a row BM25 does not match has
none): without that, a page found only by its quoted part code ties in RRF with the vector
arm's unrelated first hit. The lexical arm searches the query's own text, never its
instruction; a query without text (an image) has an empty lexical arm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from mmsearch.errors import InputError

from .fusion import RRF_K, check_fusion, rrf, score_fusion
from .lexical import LexicalShards, query_texts, search_lexical
from .merge import empty_result

MODES = ("vector", "lexical", "hybrid")
MIN_DEPTH = 50  # candidates per arm in hybrid mode (at least; 4 k for larger k)

Result = Tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SearchMode:
    """How one search ranks: the mode and, for hybrid, the fusion and its knobs.
    `fusion` None picks ``score`` when `alpha` is given, else ``rrf``."""

    mode: str = "vector"
    fusion: Optional[str] = None
    alpha: Optional[float] = None
    rrf_k: float = RRF_K

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode={self.mode!r}: expected one of {list(MODES)}")
        if self.fusion is None:
            object.__setattr__(self, "fusion", "rrf" if self.alpha is None else "score")
        if self.alpha is None:
            object.__setattr__(self, "alpha", 0.5)
        check_fusion(self.fusion, self.alpha, self.rrf_k)

    @property
    def needs_vectors(self) -> bool:
        return self.mode != "lexical"

    def depth(self, k: int) -> int:
        return max(4 * k, MIN_DEPTH) if self.mode == "hybrid" else k

    def run(self, view, lexical: LexicalShards, queries: Sequence, k: int, masks: List,
            vector: Callable[[int, List[np.ndarray]], Result]) -> Tuple[Result, list]:
        """(D, I) of the top k, and the stages' results (name, D, I) for `Hit.scores`.
        `vector(depth, lexical_rows)` runs the vector arm over the same allowed rows: its top
        `depth`, plus the rows the lexical arm found that are not among them, with their own
        vector scores (so a page only the lexical arm ranks high is still ranked by both)."""
        texts = query_texts(queries)
        if self.mode == "lexical" and not any(texts):
            raise InputError("mode='lexical' needs query text; an image-only query has no words to match "
                             "(use mode='vector' or 'hybrid')")
        depth = self.depth(k)
        lex = search_lexical(view.shards, lexical.searchers(view.shards), texts, depth, masks) \
            if view.shards else empty_result(len(texts), depth, keep_max=True)
        if self.mode == "lexical":
            return lex, [("lexical", *lex)]
        vec = vector(depth, list(lex[1]))
        if self.fusion == "rrf":
            fused = rrf([vec, lex], k, self.rrf_k)
        else:
            fused = score_fusion(vec, lex, k, self.alpha, keep_max=view.keep_max)
        return fused, [("ann", *vec), ("lexical", *lex), (self.fusion, *fused)]
