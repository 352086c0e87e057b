"""`mmsearch serve`: the HTTP API and web UI over one index (FastAPI + uvicorn).

    from mmsearch.server import create_app, Limits
    app = create_app("out/index", limits=Limits(max_k=50))   # an ASGI app: uvicorn.run(app)

Needs the ``server`` extra (fastapi, uvicorn, python-multipart). This package imports
`mmsearch.query` and the core; nothing in mmsearch imports it.
"""
from .app import ServeConfig, create_app
from .errors import ApiError
from .settings import Limits, check_bind, is_loopback

__all__ = ["ApiError", "Limits", "ServeConfig", "check_bind", "create_app", "is_loopback"]
