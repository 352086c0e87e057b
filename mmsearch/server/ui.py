"""The web UI (``static/``: index.html, app.js, style.css, favicon.svg) and the API docs page.

Assets are read from the package once, served from a fixed list (no path from a
client reaches the file system), with a Content-Security-Policy that allows only
this origin's scripts and styles. /docs is Swagger UI: from the `fastapi-offline`
package's copy when it is installed (no CDN needed), else from FastAPI's CDN default.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Dict, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from .errors import ApiError

ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
UI_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
             "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8"}


def load_assets() -> Dict[str, Tuple[bytes, str]]:
    root = resources.files("mmsearch.server") / "static"
    return {name: ((root / name).read_bytes(), kind) for name, kind in ASSETS.items()}


def offline_docs_dir() -> Optional[Path]:
    """Swagger UI files shipped by the optional `fastapi-offline` package, if present."""
    try:
        root = Path(str(resources.files("fastapi_offline") / "static"))
    except (ImportError, TypeError):
        return None
    return root if all((root / name).is_file() for name in DOCS_ASSETS) else None


def install_ui(app: FastAPI) -> None:
    assets = load_assets()
    headers = {"content-security-policy": UI_POLICY, "cache-control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        body, kind = assets["index.html"]
        return Response(body, media_type=kind, headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets or name == "index.html":
            raise ApiError(404, "not_found", f"no UI asset {name[:100]!r}; assets: "
                                             f"{[n for n in ASSETS if n != 'index.html']}")
        body, kind = assets[name]
        return Response(body, media_type=kind, headers=headers)


def install_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Swagger UI at `docs_url` for the app's /openapi.json."""
    local = offline_docs_dir()
    files = {name: ((local / name).read_bytes(), kind) for name, kind in DOCS_ASSETS.items()} if local else {}

    @app.get(docs_url, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        urls = {"swagger_js_url": f"{root}/docs-assets/swagger-ui-bundle.js",
                "swagger_css_url": f"{root}/docs-assets/swagger-ui.css"} if files else {}
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} API",
                                   swagger_favicon_url=f"{root}/static/favicon.svg", **urls)

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in files:
            raise ApiError(404, "not_found", f"no docs asset {name[:100]!r}")
        body, kind = files[name]
        return Response(body, media_type=kind, headers={"cache-control": "public, max-age=86400"})
