"""What a server accepts: `Limits`, one frozen dataclass built by the CLI (or the caller
of `create_app`), and the bind rule (localhost, or an API key)."""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from mmsearch.errors import InputError
from mmsearch.query import RERANKERS

MiB = 1 << 20
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
MIN_API_KEY_CHARS = 16
_INT_LIMITS = ("max_body_bytes", "max_image_bytes", "max_image_pixels", "max_k", "max_text_chars",
               "max_id_chars", "max_pending", "threads", "max_batch", "max_ef_search")
_POSITIVE_FLOATS = ("search_timeout", "body_timeout", "max_k_factor")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask of the server.

    `max_body_bytes`: a request body (JSON or multipart), answered 413 beyond.
    `max_image_bytes` / `max_image_pixels`: a query image, encoded size and width*height
    (checked from the header before any pixel is decoded: decompression bombs get 413).
    `max_k`: hits per search. `max_text_chars`: query text and instruction.
    `max_id_chars`: an item id in a path or in ``like``.
    `search_timeout`: seconds a search may take before the client gets 504 (the work
    itself cannot be interrupted; it finishes in the background, holding its slot).
    `body_timeout`: seconds to wait for each chunk of a request body (slow clients: 408).
    `threads`: searches run at once (worker threads; the index is thread-safe), each
    with cores // threads of torch's threads (`cores`).
    `max_batch`: waiting searches with equal arguments run together as one batch of at
    most this many queries (the model embeds a batch for little more than one query).
    `max_pending`: searches running or queued; beyond that the server answers 503.
    `rerankers`: the reranker names clients may ask for.
    `max_ef_search` / `max_k_factor`: caps on the per-call search knobs.
    """

    max_body_bytes: int = 16 * MiB
    max_image_bytes: int = 10 * MiB
    max_image_pixels: int = 40_000_000
    max_k: int = 100
    max_text_chars: int = 4000
    max_id_chars: int = 1024
    search_timeout: float = 30.0
    body_timeout: float = 15.0
    threads: int = 2
    max_batch: int = 16
    max_pending: int = 64
    rerankers: Tuple[str, ...] = RERANKERS
    max_ef_search: int = 4096
    max_k_factor: float = 64.0

    def __post_init__(self) -> None:
        for name in _INT_LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"limit {name}={value!r}: expected an int >= 1")
        for name in _POSITIVE_FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"limit {name}={value!r}: expected a number > 0")
        object.__setattr__(self, "rerankers", tuple(self.rerankers))
        unknown = [r for r in self.rerankers if r not in RERANKERS]
        if unknown:
            raise InputError(f"limit rerankers={list(self.rerankers)}: unknown {unknown}; valid: {list(RERANKERS)}")
        if self.max_image_bytes > self.max_body_bytes:
            raise InputError(f"limit max_image_bytes={self.max_image_bytes} exceeds max_body_bytes="
                             f"{self.max_body_bytes}; an image must fit in a request")

    def replace(self, **changes: Any) -> "Limits":
        """A copy with some limits changed (unknown names raise InputError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"unknown limits {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def public(self) -> Dict[str, Any]:
        """The limits as clients see them in /info."""
        return {**dataclasses.asdict(self), "rerankers": list(self.rerankers)}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_api_key(api_key: Optional[str]) -> Optional[str]:
    """The key, checked: None (no key), or printable ASCII of at least 16 characters."""
    if api_key is None:
        return None
    if not isinstance(api_key, str):
        raise InputError(f"api_key must be a str, got {type(api_key).__name__}")
    if len(api_key) < MIN_API_KEY_CHARS or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
        raise InputError(f"the API key must be at least {MIN_API_KEY_CHARS} printable ASCII characters without "
                         f"spaces (got {len(api_key)} characters); make one with: python -c \"import secrets; "
                         f"print(secrets.token_urlsafe(32))\"")
    return api_key


def check_bind(host: str, api_key: Optional[str]) -> None:
    """Refuse to serve beyond this machine without an API key."""
    if not is_loopback(host) and api_key is None:
        raise InputError(f"--host {host} would expose the index beyond this machine: pass --api-key KEY or "
                         f"set MMSEARCH_API_KEY (clients then send 'Authorization: Bearer KEY' or "
                         f"'X-API-Key: KEY'), or bind to 127.0.0.1")
