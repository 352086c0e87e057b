"""The JSON shapes of the API (pydantic models, which also document it in /docs), and
`json_safe` for metadata values Arrow hands back."""
from __future__ import annotations

import datetime
import decimal
import math
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    """POST /search. At least one of `text`, `image`, `like`; `text` with an image or
    `like` is a composed query ("this, but red")."""

    model_config = ConfigDict(extra="forbid")

    text: Optional[str] = Field(None, description="query text")
    image: Optional[str] = Field(None, description="query image: base64 of the encoded file (PNG, JPEG, ...), "
                                                   "or a data: URL. Paths and URLs are not accepted.")
    like: Optional[str] = Field(None, description="'more like this': an item id; its image (or text) is the query")
    task: Optional[str] = Field(None, description="task name choosing the query instruction (GET /tasks)")
    instruction: Optional[str] = Field(None, description="query instruction, verbatim (instead of task)")
    k: int = Field(10, ge=1, strict=True, description="number of hits (at most limits.max_k, see GET /info)")
    filter: Optional[Dict[str, Any]] = Field(None, description='metadata filter, e.g. {"modality": "image", '
                                                               '"year": {"gte": 2000}}')
    rerank: Optional[Union[str, List[str]]] = Field(None, description='rerankers: "refine", "hubness", "vlm", '
                                                                      'a comma-separated chain or a list')
    params: Optional[Dict[str, Union[int, float]]] = Field(None, description="search knobs: nprobe, efSearch, "
                                                                             "k_factor")
    mode: Literal["vector", "lexical", "hybrid"] = Field("vector", description="vector (embeddings), lexical (BM25 "
                                                         "over the text fields) or hybrid (both, fused); see "
                                                         "GET /info index.lexical")
    fusion: Optional[Literal["rrf", "score"]] = Field(None, description="hybrid: rrf (default) or score "
                                                                        "(the default when alpha is given)")
    alpha: Optional[float] = Field(None, ge=0, le=1, description="hybrid score fusion: the vector arm's weight")
    rrf_k: Optional[float] = Field(None, ge=0, description="hybrid rrf: the k of 1/(k + rank), default 60")

    def mode_options(self) -> Dict[str, Any]:
        """The Index.search keywords of the ranking mode (only those given)."""
        opts = {"mode": self.mode, "fusion": self.fusion, "alpha": self.alpha, "rrf_k": self.rrf_k}
        return {k: v for k, v in opts.items() if v is not None}


class HitOut(BaseModel):
    rank: int
    id: str
    score: float
    scores: Dict[str, Optional[float]]
    row: int
    shard: str
    metadata: Dict[str, Any]
    thumbnail: str = Field(description="URL of the item's thumbnail")


class SearchResponse(BaseModel):
    hits: List[HitOut]
    k: int
    took_ms: float
    query: Dict[str, Any]


class ItemOut(BaseModel):
    id: str
    metadata: Dict[str, Any]
    thumbnail: str


class ErrorOut(BaseModel):
    error: str = Field(description="a short machine-readable code, e.g. invalid_image, payload_too_large")
    detail: str = Field(description="what is wrong and what is accepted")


ERROR_RESPONSES: Dict[Union[int, str], Dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in ((400, "malformed input"), (401, "missing or wrong API key"), (404, "unknown item"),
                         (413, "body or image too large"), (415, "unsupported content type"),
                         (422, "invalid field"), (503, "too many searches queued"), (504, "search timed out"))
}


def json_safe(value: Any) -> Any:
    """A value JSON can carry: NaN and infinities become None, bytes a placeholder,
    dates ISO strings, decimals floats; containers recursively."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return json_safe(float(value))
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return str(value)
