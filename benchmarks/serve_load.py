"""The HTTP service under load: `mmsearch serve` against a plain FastAPI endpoint that
calls `Index.search` directly, the same index and model, in one run.

    python benchmarks/serve_load.py [--seconds 15] [--clients 20]

The index: 28 shape pictures and captions in 3 Flat shards, embedded by the tiny
Qwen2-VL of the tests (hidden 64). Each server runs alone in its own process; the load
comes from `loadgen.py` in a third process (raw keep-alive HTTP/1.1, `clients`
connections in a closed loop). Loads:

- text: text searches only (k 5, 10 or 20), on both servers;
- mix: the test mix on `mmsearch serve` (55% text, 20% image, 10% "more like this",
  8% thumbnails, 7% item reads).

`mmsearch serve` says where a request's time goes in a Server-Timing header (see
`mmsearch/server/timing.py`); the mean of each stage is reported, and "outside" is the
client's latency minus the server's handler time: HTTP parsing, the event loop's queue
and the socket. Writes results/serve_load.json.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import RESULTS, environment  # noqa: E402
from test_server_support import (COLOURS, SHAPES, TEXTS, b64_png, draw, free_port,  # noqa: E402
                                 write_corpus)

IDS = [f"shapes/{s}-{c}" for s in SHAPES for c in COLOURS]
PLAIN_SERVER = """
import sys
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from mmsearch.query import open_index

index = open_index(sys.argv[1], device="cpu")
index.search("warm up", k=1)
app = FastAPI()

class Body(BaseModel):
    text: str
    k: int = 10

@app.post("/search")
def search(body: Body):
    return {"hits": [hit.to_dict() for hit in index.search(body.text, k=body.k)]}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


def requests_mix(rng: random.Random, n: int, text_only: bool = False) -> list:
    """n requests [kind, method, path, body] of the load test's mix (or its text part)."""
    images = [b64_png(draw(s, COLOURS[c], size=rng.choice((48, 64, 96)))) for s in SHAPES for c in COLOURS]
    words = [w for t in TEXTS for w in t.split()] + list(COLOURS) + list(SHAPES)
    out = []
    while len(out) < n:
        r = 0.0 if text_only else rng.random()
        if r < 0.55:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
            out.append(["text", "POST", "/search", {"text": text, "k": rng.choice((5, 10, 20))}])
        elif r < 0.75:
            out.append(["image", "POST", "/search", {"image": rng.choice(images), "k": 10, "task": "i2i"}])
        elif r < 0.85:
            out.append(["like", "POST", "/search", {"like": rng.choice(IDS), "k": 10}])
        elif r < 0.93:
            out.append(["thumbnail", "GET", f"/items/{quote(rng.choice(IDS), safe='')}/thumbnail", None])
        else:
            out.append(["item", "GET", f"/items/{quote(rng.choice(IDS), safe='')}", None])
    return out


def build_index(root: Path) -> Path:
    import mmsearch
    from mmsearch.testing import build_tiny_model

    model = build_tiny_model("qwen2_vl", root / "model", seed=0)
    mmsearch.build_index([write_corpus(root / "corpus")], root / "index", model=str(model), index="Flat",
                         shard_size=10, device="cpu")
    return root / "index"


def start(cmd: list, url: str, log: Path) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.post(url + "/search", json={"text": "warm up", "k": 5}, timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd} not ready: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(url: str, requests: list, clients: int, seconds: float, tmp: Path) -> dict:
    path = tmp / "requests.json"
    path.write_text(json.dumps(requests))
    done = subprocess.run([sys.executable, str(HERE / "loadgen.py"), url, str(path), "--clients", str(clients),
                           "--seconds", str(seconds)], capture_output=True, text=True, check=True)
    return summary(json.loads(done.stdout))


def stats(ms: list) -> dict:
    a = np.array(ms)
    return {"requests": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def timing_split(ms: list, timings: list) -> dict:
    """Mean ms per Server-Timing stage, and the rest of the client's latency ("outside")."""
    if not timings:
        return {}
    stages = sorted({name for t in timings for name in t})
    split = {name: round(float(np.mean([t.get(name, 0.0) for t in timings])), 3) for name in stages}
    split["outside"] = round(float(np.mean(ms)) - split.get("total", 0.0), 3)
    return split


def summary(raw: dict) -> dict:
    kinds = raw["kinds"]
    every = [m for k in kinds.values() for m in k["ms"]]
    errors = [e for k in kinds.values() for e in k["errors"]]
    out = {"seconds": round(raw["seconds"], 2), "errors": len(errors), "error_examples": errors[:3],
           "rps": round(len(every) / raw["seconds"], 1), **stats(every),
           "by_kind": {name: {**stats(k["ms"]), "split_ms": timing_split(k["ms"], k["timing"])}
                       for name, k in sorted(kinds.items())}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--serve-args", default="", help="extra `mmsearch serve` options, e.g. '--workers 2'")
    p.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = p.parse_args()
    rng = random.Random(0)
    text, mix = requests_mix(rng, 4000, text_only=True), requests_mix(rng, 4000)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        index = build_index(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        load_before = os.getloadavg()[0]  # other work on the machine skews the numbers
        serve = start([sys.executable, "-m", "mmsearch", "serve", str(index), "--port", str(port), "--quiet",
                       "--no-access-log", *args.serve_args.split()], url, tmp / "serve.log")
        try:
            ours_text = load(url, text, args.clients, args.seconds, tmp)
            ours_mix = load(url, mix, args.clients, args.seconds, tmp)
        finally:
            stop(serve)
        plain = start([sys.executable, "-c", PLAIN_SERVER, str(index), str(port)], url, tmp / "plain.log")
        try:
            plain_text = load(url, text, args.clients, args.seconds, tmp)
        finally:
            stop(plain)
    result = {
        "clients": args.clients,
        "text": {"mmsearch": ours_text, "plain_fastapi": plain_text,
                 "rps_ratio": round(ours_text["rps"] / plain_text["rps"], 2)},
        "mix": ours_mix,
        "setup": {"index": "28 items in 3 Flat shards, tiny Qwen2-VL (hidden 64), CPU",
                  "mmsearch": f"mmsearch serve {args.serve_args}".strip(),
                  "plain_fastapi": "one sync FastAPI endpoint calling Index.search (uvicorn defaults)",
                  "client": f"benchmarks/loadgen.py: {args.clients} keep-alive connections in a closed loop, "
                            "a separate process on the same 2 cores",
                  "load_average_1min_before": round(load_before, 2), **environment()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    show = {"text": {k: (v if not isinstance(v, dict) else {n: v[n] for n in ("rps", "p50_ms", "p99_ms", "errors")})
                     for k, v in result["text"].items()},
            "mix": {n: ours_mix[n] for n in ("rps", "p50_ms", "p99_ms", "errors")},
            "text_split_ms": ours_text["by_kind"]["text"]["split_ms"]}
    print(json.dumps(show, indent=1))


if __name__ == "__main__":
    main()
