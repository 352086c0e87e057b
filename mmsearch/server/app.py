"""`create_app`: the FastAPI application of one index; `ServeConfig` and `app_from_env`
for uvicorn worker processes (each builds its own app from the config the CLI passes).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

from fastapi import FastAPI

from mmsearch._version import __version__
from mmsearch.errors import InputError
from mmsearch.index_format import PathLike
from mmsearch.query import Index, open_index

from .errors import install_handlers
from .guard import Guard, key_checker
from .routes import api_router
from .service import SearchService
from .settings import LOOPBACK_NAMES, Limits, check_api_key
from .ui import install_docs, install_ui

CONFIG_ENV = "MMSEARCH_SERVE_CONFIG"
LOCAL_HOSTS = LOOPBACK_NAMES + ("127.0.0.1", "::1")
DESCRIPTION = """Multimodal search over one mmsearch index.

`POST /search` with JSON (`text`, `image` as base64, `like` an item id, `task` or `instruction`, `k`,
`filter`, `rerank`, `params`) or a multipart form with the image as a file. Errors are JSON
`{"error": code, "detail": message}`. With an API key, send `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""


def create_app(index: Union[Index, PathLike], *, api_key: Optional[str] = None, limits: Limits = Limits(),
               encoder: Any = None, device: str = "auto", allowed_hosts: Optional[Sequence[str]] = None,
               preload: bool = False) -> FastAPI:
    """The app serving `index` (an open `Index`, or a path opened read-only here and closed
    at shutdown). `api_key`: required on every route but /healthz, the UI and the docs.
    `allowed_hosts`: Host header names to answer (None: any). `preload`: load the model
    and search once at startup. The app's `SearchService` is ``app.state.service``."""
    if not isinstance(limits, Limits):
        raise InputError(f"limits must be a mmsearch.server.Limits, got {type(limits).__name__}")
    key = check_api_key(api_key)
    owned = not isinstance(index, Index)
    opened = open_index(index, encoder=encoder, device=device) if owned else index
    service = SearchService(opened, limits, auth=key is not None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if preload:
            await asyncio.get_running_loop().run_in_executor(None, service.warm_up)
        yield
        service.close()
        if owned:
            opened.close()

    app = FastAPI(title="mmsearch", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    install_handlers(app, hide=[str(opened.path.resolve()), str(opened.path)])
    app.include_router(api_router(service, key_checker(key)))
    install_ui(app)
    install_docs(app)
    app.add_middleware(Guard, max_body_bytes=limits.max_body_bytes, body_timeout=limits.body_timeout,
                       allowed_hosts=allowed_hosts)
    return app


@dataclass(frozen=True)
class ServeConfig:
    """What `mmsearch serve` hands each uvicorn worker process."""

    index: str
    api_key: Optional[str] = None
    limits: Limits = Limits()
    model: Optional[str] = None
    device: str = "auto"
    allowed_hosts: Optional[Tuple[str, ...]] = None
    preload: bool = True

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "limits": dataclasses.asdict(self.limits)})

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        raw = json.loads(text)
        hosts = raw.get("allowed_hosts")
        return cls(**{**raw, "limits": Limits(**raw.get("limits", {})),
                      "allowed_hosts": None if hosts is None else tuple(hosts)})

    def create_app(self) -> FastAPI:
        return create_app(self.index, api_key=self.api_key, limits=self.limits, encoder=self.model,
                          device=self.device, allowed_hosts=self.allowed_hosts, preload=self.preload)


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the app of the ServeConfig in $MMSEARCH_SERVE_CONFIG."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise InputError(f"${CONFIG_ENV} is not set; start the server with `mmsearch serve INDEX`")
    return ServeConfig.from_json(text).create_app()
