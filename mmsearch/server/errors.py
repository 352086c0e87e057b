"""Every error leaves the server as JSON ``{"error": code, "detail": message}``.

`ApiError` is what the server's own code raises; the handlers installed by
`install_handlers` turn it, mmsearch's errors (the index's path hidden), FastAPI's validation errors and
Starlette's HTTP errors into that shape. Unexpected exceptions become a 500 whose
detail names only the exception type (the traceback goes to the log, not the client).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmsearch.errors import ImageError, InputError, MMSearchError, UnknownTaskError

log = logging.getLogger("mmsearch.server")

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
               503: "busy", 504: "timeout"}


class ApiError(Exception):
    """An error answer: HTTP status, a short machine-readable code, a message for people."""

    def __init__(self, status: int, error: str, detail: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_response(status: int, error: str, detail: str, headers: Optional[Dict[str, str]] = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


def from_mmsearch(e: MMSearchError) -> ApiError:
    """Errors of the query engine: the client's fault (400) or the server's (500)."""
    if isinstance(e, UnknownTaskError):
        return ApiError(400, "unknown_task", str(e))
    if isinstance(e, ImageError):
        return ApiError(400, "invalid_image", f"image: {e.reason}")
    if isinstance(e, InputError):
        return ApiError(400, "bad_request", str(e))
    log.error("server-side error: %s", e)
    return ApiError(500, "server_error", f"{type(e).__name__}: {e}")


def _field_message(err: Dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
    return f"{where}: {err.get('msg', 'invalid value')}"


def install_handlers(app: FastAPI, hide: Sequence[str] = ()) -> None:
    """`hide`: server-side strings (the index path) replaced by "<index>" in details."""
    def scrub(text: str) -> str:
        for secret in hide:
            text = text.replace(secret, "<index>")
        return text

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.error, e.detail, e.headers)

    @app.exception_handler(MMSearchError)
    async def mmsearch_error(request: Request, e: MMSearchError) -> JSONResponse:
        api = from_mmsearch(e)
        return error_response(api.status, api.error, scrub(api.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        fields = [{"field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                   "message": str(err.get("msg", ""))} for err in errors]
        return error_response(422, "validation_error", "; ".join(_field_message(err) for err in errors),
                              fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(e.status_code, "http_error")
        detail = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs"
        elif e.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}; see /docs"
        return error_response(e.status_code, code, detail, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"unexpected {type(e).__name__}; see the server log")
