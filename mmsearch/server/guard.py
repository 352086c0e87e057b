"""Request guards: the API key, the body-size and body-time limits, the Host header,
security headers.

`Guard` is a plain ASGI middleware (no buffering): a declared Content-Length above
the limit is answered 413 before the body is read (a body of moderate size is read
and dropped first, so ordinary clients see the answer instead of a reset
connection); a streamed body is counted as it arrives; each chunk must come within
`body_timeout` seconds. With `allowed_hosts` (a server on localhost without a key),
other Host headers are refused, which defeats DNS rebinding. Every response gets
headers that stop MIME sniffing, framing and referrer leaks.
"""
from __future__ import annotations

import asyncio
import hmac
from typing import Awaitable, Callable, Optional, Sequence

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"cross-origin-resource-policy", b"same-origin")]
DRAIN_FACTOR = 4  # bodies up to this many times the limit are read and dropped before the 413
_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "payload_too_large", f"request body exceeds the limit of {limit:,} bytes "
                                                   f"(max_body_bytes); send a smaller image or fewer fields")


class BodyTimeout(ApiError):
    def __init__(self, seconds: float):
        super().__init__(408, "request_timeout", f"the request body did not arrive within {seconds:g} s "
                                                 f"(body_timeout)")


class Guard:
    """ASGI middleware: the Host allow-list, body limits, security headers."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout: float,
                 allowed_hosts: Optional[Sequence[str]] = None):
        self.app, self.max_body_bytes, self.body_timeout = app, max_body_bytes, body_timeout
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers = Headers(scope=scope)
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            await error_response(400, "bad_request", f"Host {headers.get('host', '')[:100]!r} is not served here "
                                                     f"(a local server answers only {sorted(self.allowed_hosts)})"
                                 )(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None:
            refusal = await self._check_declared(declared, receive)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, self._counting(receive), send)

    async def _check_declared(self, declared: str, receive: Receive):
        """A response refusing the request by its Content-Length, or None to go on."""
        if not declared.isdigit():
            return error_response(400, "bad_request", f"Content-Length {declared[:40]!r} is not a number",
                                  headers={"connection": "close"})
        if int(declared) <= self.max_body_bytes:
            return None
        if int(declared) <= DRAIN_FACTOR * self.max_body_bytes:
            try:
                await self._drain(receive)
            except ApiError:
                pass
        e = BodyTooLarge(self.max_body_bytes)
        return error_response(e.status, e.error, e.detail, headers={"connection": "close"})

    async def _drain(self, receive: Receive) -> None:
        more = True
        while more:
            message = await self._next(receive)
            more = message.get("type") == "http.request" and message.get("more_body", False)

    async def _next(self, receive: Receive) -> Message:
        try:
            if _timeout is None:  # Python 3.10
                return await asyncio.wait_for(receive(), self.body_timeout)
            # a timer, not wait_for's task: a body already in the buffer is read without a
            # trip round the event loop, which under load waits behind every other request
            async with _timeout(self.body_timeout):
                return await receive()
        except asyncio.TimeoutError:
            raise BodyTimeout(self.body_timeout) from None

    def _counting(self, receive: Receive) -> Receive:
        seen, done = 0, False

        async def wrapped() -> Message:
            nonlocal seen, done
            if done:  # the body is in: later receives wait for a disconnect, untimed
                return await receive()
            message = await self._next(receive)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                done = not message.get("more_body", False)
            return message
        return wrapped


def host_name(host: str) -> str:
    """The name in a Host header, without the port ("[::1]:8000" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
            message = {**message, "headers": list(message.get("headers", [])) + extra}
        await send(message)
    return wrapped


def given_key(request: Request) -> Optional[str]:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key")


def key_checker(api_key: Optional[str]) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: 401 unless the request carries `api_key` (None: no check).
    The comparison takes the same time wherever the keys differ."""
    expected = None if api_key is None else api_key.encode("utf-8")

    async def require_key(request: Request) -> None:
        if expected is None:
            return
        given = given_key(request)
        if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            what = "no API key" if given is None else "a wrong API key"
            raise ApiError(401, "unauthorized", f"this server needs an API key and the request has {what}; "
                                                "send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                           headers={"www-authenticate": "Bearer"})
    return require_key
