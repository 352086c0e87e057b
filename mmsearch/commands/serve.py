"""`mmsearch serve`: the HTTP API and web UI of an index (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import dataclasses
import os

EXAMPLES = """examples:
  mmsearch serve out/index                              # http://127.0.0.1:8000 (UI at /, API docs at /docs)
  mmsearch serve out/index --port 9000 --max-k 50
  MMSEARCH_API_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))") \\
      mmsearch serve out/index --host 0.0.0.0 --workers 2
  curl -s localhost:8000/search -H 'Content-Type: application/json' -d '{"text": "a red bus", "k": 5}'
  curl -s localhost:8000/search -F text="the same, but red" -F image=@ref.jpg
"""
KEY_ENV = "MMSEARCH_API_KEY"


def register(sub) -> None:
    from ..index_format import MANIFEST_FILE
    from ._common import int_range

    p = sub.add_parser(
        "serve", help="serve an index over HTTP: JSON API and web UI",
        description="Serve one index read-only: POST /search, GET /items/{id}, /items/{id}/thumbnail, /info, "
                    "/tasks, /healthz, the API docs at /docs and a web UI at /. Binds to 127.0.0.1; any other "
                    "address needs an API key (--api-key or $MMSEARCH_API_KEY).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help=f"index directory (holding {MANIFEST_FILE})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_range(1, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"clients must send it ('Authorization: Bearer KEY' or 'X-API-Key: KEY'); default "
                        f"${KEY_ENV} (better: other users can see a command line). Required to bind beyond "
                        f"localhost")
    p.add_argument("--workers", type=int_range(1), default=1,
                   help="server processes, each with its own copy of the model (default 1)")
    p.add_argument("--threads", type=int_range(1), default=None, help="searches run at once per process (default 2)")
    p.add_argument("--model", default=None,
                   help="load the encoder from here instead of the manifest's model id (same weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--max-k", type=int_range(1), default=None, help="most hits a search may ask for (default 100)")
    p.add_argument("--max-body-mb", type=float, default=None, help="largest request body in MiB (default 16)")
    p.add_argument("--max-image-pixels", type=int, default=None, help="largest query image, width*height (default 40,000,000)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a search answers 504 (default 30)")
    p.add_argument("--rerankers", default=None, help="rerankers clients may use, comma-separated "
                                                     "(default refine,hubness,vlm; '' for none)")
    p.add_argument("--no-preload", action="store_true", help="load the model on the first search, not at startup")
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.set_defaults(handler=run)


def limits_from(args):
    from ..server import Limits

    changes = {"max_k": args.max_k, "max_image_pixels": args.max_image_pixels, "search_timeout": args.timeout,
               "threads": args.threads}
    if args.max_body_mb is not None:
        body = int(args.max_body_mb * (1 << 20))
        changes.update(max_body_bytes=body, max_image_bytes=min(body, Limits().max_image_bytes))
    if args.rerankers is not None:
        changes["rerankers"] = tuple(r.strip() for r in args.rerankers.split(",") if r.strip())
    return Limits().replace(**{k: v for k, v in changes.items() if v is not None})


def config_from(args):
    from ..errors import InputError
    from ..index_format import require_index
    from ..server import ServeConfig, check_bind, is_loopback
    from ..server.app import LOCAL_HOSTS
    from ..server.settings import check_api_key

    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: expected 1..65535")
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected an int >= 1")
    key = check_api_key(args.api_key if args.api_key is not None else (os.environ.get(KEY_ENV) or None))
    check_bind(args.host, key)
    require_index(args.index, "build one with `mmsearch index build`")
    # a local server without a key answers only local Host names (no DNS rebinding)
    hosts = LOCAL_HOSTS if key is None and is_loopback(args.host) else None
    return ServeConfig(index=args.index, api_key=key, limits=limits_from(args), model=args.model,
                       device=args.device, allowed_hosts=hosts, preload=not args.no_preload)


def run(args) -> int:
    from ..errors import InputError

    try:
        import uvicorn  # noqa: F401  (the server extra is installed)
    except ImportError:
        raise InputError("mmsearch serve needs the server extra: pip install 'mmsearch[server]'") from None
    from ..server.app import CONFIG_ENV

    config = config_from(args)
    options = dict(host=args.host, port=args.port, access_log=not args.no_access_log, timeout_keep_alive=5,
                   log_level="warning" if args.quiet else ("debug" if args.verbose > 1 else "info"),
                   server_header=False,
                   limit_concurrency=config.limits.max_pending * 4)
    from ..server.run import run_uvicorn, serve_line

    line = serve_line(args.index, args.host, args.port)  # printed once the server answers
    if args.workers == 1:  # load the model here, so a failure is an ordinary CLI error
        app = dataclasses.replace(config, preload=False).create_app()
        if config.preload:
            app.state.service.warm_up()
        run_uvicorn(app, options, line)
    else:  # each worker process builds its own app from the config
        os.environ[CONFIG_ENV] = config.to_json()
        run_uvicorn("mmsearch.server.app:app_from_env", options, line, workers=args.workers)
    return 0
