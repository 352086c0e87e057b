"""The HTTP API: /search, /items/{id}, /items/{id}/thumbnail, /info, /tasks, /healthz.

Every route but /healthz sits behind the API key check (a no-op without a key).
Item ids are path-encoded (``encodeURIComponent``; ids may hold slashes).
"""
from __future__ import annotations

from typing import Any, Dict, List
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from . import fastjson
from .fastjson import FastJSONResponse
from .inputs import read_search
from .schemas import ERROR_RESPONSES, ItemOut, SearchRequest, SearchResponse
from .service import SearchService
from .timing import Stopwatch

_FORM_SCHEMA = {
    "type": "object",
    "properties": {"image": {"type": "string", "format": "binary", "description": "the query image file"},
                   **{name: {"type": "string"} for name in ("text", "like", "task", "instruction", "rerank")},
                   "k": {"type": "integer", "default": 10},
                   "filter": {"type": "string", "description": "JSON object"},
                   "params": {"type": "string", "description": "JSON object"}},
}
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
    "multipart/form-data": {"schema": _FORM_SCHEMA}}}}


def thumbnail_url(request: Request, item_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/items/{quote(item_id, safe='')}/thumbnail"


def api_router(service: SearchService, require_key) -> APIRouter:
    router = APIRouter()
    guarded = APIRouter(dependencies=[Depends(require_key)], responses={401: ERROR_RESPONSES[401]})

    @router.get("/healthz", tags=["service"], summary="liveness: 200 while the server answers")
    async def healthz() -> Dict[str, Any]:
        return {"status": "ok", "pending": service.pending}

    @guarded.get("/info", tags=["service"], summary="the index, its model, and this server's limits")
    def info() -> Dict[str, Any]:
        return service.info()

    @guarded.get("/tasks", tags=["service"], summary="task names for the query instruction")
    def tasks() -> List[Dict[str, Any]]:
        return service.tasks()

    @guarded.post("/search", tags=["search"], response_model=SearchResponse, responses=ERROR_RESPONSES,
                  openapi_extra=SEARCH_BODY,
                  summary="search with text, an image (base64 or upload), an item ('more like this') or both")
    async def search(request: Request) -> Response:
        watch = Stopwatch()
        req, image = await read_search(request, service.limits)
        watch.lap("parse")
        result = await service.search(req, image, watch)
        for hit in result["hits"]:
            hit["thumbnail"] = thumbnail_url(request, hit["id"])
        body = fastjson.dumps(result)
        watch.lap("json")
        return Response(body, media_type="application/json", headers={"server-timing": watch.header()})

    @guarded.get("/items/{item_id:path}/thumbnail", tags=["items"], response_class=Response,
                 responses={200: {"content": {"image/jpeg": {}}}, 404: ERROR_RESPONSES[404]},
                 summary="the item's thumbnail from the index's store")
    def thumbnail(item_id: str) -> Response:
        data, kind = service.thumbnail(item_id)
        return Response(data, media_type=kind, headers={"cache-control": "private, max-age=300"})

    @guarded.get("/items/{item_id:path}/matches", tags=["items"], responses=ERROR_RESPONSES,
                 summary="multi-vector indexes: where on the item's page a text query matched (MaxSim heat map)")
    def matches(item_id: str, text: str) -> FastJSONResponse:
        return FastJSONResponse(service.match_map(item_id, text))

    @guarded.get("/items/{item_id:path}", tags=["items"], response_model=ItemOut,
                 responses={404: ERROR_RESPONSES[404]}, summary="one item's metadata")
    def item(item_id: str, request: Request) -> FastJSONResponse:
        out = service.item(item_id)
        return FastJSONResponse({**out, "thumbnail": thumbnail_url(request, out["id"])})

    router.include_router(guarded)
    return router
