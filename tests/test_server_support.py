"""Helpers of the server tests (no tests here): a small picture corpus indexed once per
session by the real indexer with the tiny Qwen2-VL, and a real uvicorn on a free
loopback port."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (214, 40, 40), "green": (46, 160, 67), "blue": (40, 90, 200), "yellow": (240, 190, 20),
           "purple": (130, 60, 170)}
SHAPES = ("circle", "square", "triangle", "ring")
TEXTS = ["a red double-decker bus in a city street", "a small dog running on the grass",
         "two cats sleeping on a blue sofa", "a man riding a bicycle down the road",
         "a bowl of green apples on a kitchen table", "a sailing boat on a calm sea at sunset"]
CHROMIUM = "/usr/bin/chromium"
_BUILT: Dict[str, Path] = {}


def draw(shape: str, colour, size: int = 96) -> Image.Image:
    im = Image.new("RGB", (size, size), (250, 250, 247))
    d, m = ImageDraw.Draw(im), size // 6
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=colour)
    else:
        d.ellipse(box, outline=colour, width=size // 8)
    return im


def png_bytes(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def b64_png(im: Image.Image) -> str:
    return base64.b64encode(png_bytes(im)).decode("ascii")


def write_corpus(root: Path) -> Path:
    """items.jsonl: 20 shape pictures with captions, 6 texts, 2 picture+text items; ids
    with a slash, a space and non-ASCII to exercise URL encoding."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (colour, shape) in enumerate((c, s) for s in SHAPES for c in COLOURS):
        name = f"img/{shape}-{colour}.png"
        draw(shape, COLOURS[colour]).save(root / name)
        rows.append({"id": f"shapes/{shape}-{colour}", "image": name, "colour": colour, "shape": shape, "n": i})
    for i, text in enumerate(TEXTS):
        rows.append({"id": f"text {i}", "text": text, "colour": None, "shape": None, "n": 100 + i})
    rows.append({"id": "café-red-square", "image": "img/square-red.png", "text": "a red square, captioned",
                 "colour": "red", "shape": "square", "n": 200})
    rows.append({"id": "blue-ring+text", "image": "img/ring-blue.png", "text": "a blue ring", "colour": "blue",
                 "shape": "ring", "n": 201})
    path = root / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def shared_index(tmp_path_factory, tiny_dir) -> Path:
    """The corpus indexed once per session (3 Flat shards, thumbnails in the store)."""
    if "index" not in _BUILT:
        import mmsearch

        root = tmp_path_factory.mktemp("server-corpus")
        source = write_corpus(root)
        mmsearch.build_index([source], root / "index", model=str(tiny_dir("qwen2_vl")), index="Flat",
                             shard_size=10, device="cpu")
        _BUILT["index"] = root / "index"
    return _BUILT["index"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(reason: str) -> None:
    """Skip, or fail where $MMSEARCH_SERVER_TESTS=required (CI: these tests must run)."""
    if os.environ.get("MMSEARCH_SERVER_TESTS") == "required":
        pytest.fail(f"MMSEARCH_SERVER_TESTS=required but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_server_deps() -> None:
    import importlib.util

    for module in ("fastapi", "uvicorn", "httpx", "multipart"):
        if importlib.util.find_spec(module) is None:
            _missing(f"{module} is not installed (pip install -e '.[server]')")


def chromium_or_skip() -> str:
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        _missing("playwright is not installed (pip install playwright; no `playwright install` needed)")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no {CHROMIUM} (apt-get install -y chromium)")
    return CHROMIUM


# `python -m mmsearch`, with "serve" registered even where cli.py does not list it yet
_MAIN = ("import sys, mmsearch.cli as c\n"
         "if 'serve' not in c.COMMAND_MODULES: c.COMMAND_MODULES += ('serve',)\n"
         "sys.exit(c.main(sys.argv[1:]))")


def mmsearch_command() -> list:
    return [sys.executable, "-c", _MAIN]


class ServerProcess:
    """`mmsearch serve` in a subprocess on 127.0.0.1:<free port>; stopped by `stop()`."""

    def __init__(self, index: Path, *args: str, log: Optional[Path] = None, env: Optional[dict] = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        cmd = [*mmsearch_command(), "serve", str(index), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})

    def wait_ready(self, timeout: float = 120.0, headers: Optional[dict] = None) -> "ServerProcess":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s: {self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else "(no log)"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode


def copy_index(index: Path, dest: Path) -> Path:
    shutil.copytree(index, dest)
    return dest


class ThreadServer:
    """A real uvicorn serving `app` on 127.0.0.1:<free port> in a thread of this process."""

    def __init__(self, app, **config):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        options = {"log_level": "warning", "access_log": False, "lifespan": "on", **config}
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, **options))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def raw_http(port: int, request: bytes, timeout: float = 10.0) -> Tuple[int, bytes]:
    """Send raw bytes, return (status, body) of the answer (0 when the server closed
    the connection without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if _complete(b"".join(chunks)):
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    raw = b"".join(chunks)
    if not raw.startswith(b"HTTP/1.1 "):
        return 0, raw
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
