"""Running the app under uvicorn, and saying so once it answers: one line on stdout,
``mmsearch: serving INDEX at http://127.0.0.1:8000 (Ctrl+C to stop)``."""
from __future__ import annotations

import sys
import threading
import time
import urllib.request
from typing import Any, Dict, Optional, TextIO

STARTUP_FAILURE = 3  # uvicorn's exit status when the app's startup fails


def server_url(host: str, port: int) -> str:
    """The URL clients use: IPv6 addresses in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_line(index: str, host: str, port: int) -> str:
    return f"mmsearch: serving {index} at {server_url(host, port)} (Ctrl+C to stop)"


def _local_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to `host` (any-address binds: loopback)."""
    return server_url({"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host), port)


def run_uvicorn(app: Any, options: Dict[str, Any], line: str, workers: int = 1,
                out: Optional[TextIO] = None) -> None:
    """Serve `app` (an ASGI app; with several `workers`, an import string of a factory)
    with uvicorn `options`, printing `line` to `out` (stdout) once the server answers."""
    import uvicorn

    out = out or sys.stdout

    def say() -> None:
        print(line, file=out, flush=True)

    if workers == 1:
        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if self.started and not self.should_exit:
                    say()

        server = Server(uvicorn.Config(app, **options))
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    url = _local_url(options.get("host", "127.0.0.1"), options.get("port", 8000)) + "/healthz"
    stop = threading.Event()
    threading.Thread(target=_announce_when_healthy, args=(url, say, stop), daemon=True).start()
    try:
        uvicorn.run(app, workers=workers, factory=True, **options)
    finally:
        stop.set()


def _announce_when_healthy(url: str, say, stop: threading.Event, every: float = 0.2) -> None:
    """Worker processes: poll /healthz until one answers, then `say`."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    say()
                    return
        except OSError:
            pass
        time.sleep(every)
