"""`Hit`: one search result, hydrated from the shard's meta.arrow."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from mmsearch.types import modality_has


@dataclass(frozen=True)
class Hit:
    """One result of `Index.search`.

    `rank` is 1-based (rank 1 is the best hit). `score` is the final score: the
    index's similarity (inner product = cosine for normalised vectors; squared
    distance, lower is better, for an ``l2`` index), or the last reranker's
    score. `scores` keeps every stage's score (``ann``, then one per reranker).
    `metadata` holds the row's meta.arrow columns except ``id``: ``modality``,
    ``text``, ``image`` (the source reference) and the item's own metadata.
    ``modality`` is one of the vocabulary of `mmsearch.types` (text, image,
    image,text, page); a page of an index from before "page" existed says "page".
    `row` is the global row id (what `search_vectors` returns), `shard` its shard.
    """

    id: str
    score: float
    rank: int
    metadata: Mapping[str, Any]
    row: int
    shard: str
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def text(self) -> Optional[str]:
        return self.metadata.get("text")

    @property
    def image(self) -> Optional[str]:
        return self.metadata.get("image")

    @property
    def modality(self) -> Optional[str]:
        return self.metadata.get("modality")

    def has(self, part: str) -> bool:
        """Whether the item holds `part` ("image" or "text"), as ``{"has": part}`` filters."""
        return modality_has(self.modality or "", part)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready fields (metadata values as Arrow gave them)."""
        return {"rank": self.rank, "id": self.id, "score": self.score, "scores": dict(self.scores),
                "row": self.row, "shard": self.shard, "metadata": dict(self.metadata)}
