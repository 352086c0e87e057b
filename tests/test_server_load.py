"""A bounded load test on loopback: `mmsearch serve` in its own process, 20 concurrent
clients for 15 s (at most 20,000 requests) of text, image and "more like this" searches
plus item and thumbnail reads. Every answer must be a 200; p50/p99 and the request rate
are printed and written as JSON (to $MMSEARCH_LOAD_OUT too, e.g.
benchmarks/results/serve_load.json). $MMSEARCH_LOAD_SECONDS / $MMSEARCH_LOAD_CLIENTS
change the duration and concurrency."""
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

from test_server_support import COLOURS, SHAPES, TEXTS, ServerProcess, b64_png, draw, require_server_deps, shared_index

require_server_deps()

import httpx  # noqa: E402

SECONDS = float(os.environ.get("MMSEARCH_LOAD_SECONDS", "15"))
CLIENTS = int(os.environ.get("MMSEARCH_LOAD_CLIENTS", "20"))
MAX_REQUESTS = 20_000
IDS = [f"shapes/{s}-{c}" for s in SHAPES for c in COLOURS]


def requests_mix(rng: random.Random):
    """An endless stream of (kind, method, url, json body)."""
    images = [b64_png(draw(s, COLOURS[c], size=rng.choice((48, 64, 96)))) for s in SHAPES for c in COLOURS]
    words = [w for t in TEXTS for w in t.split()] + list(COLOURS) + list(SHAPES)
    while True:
        r = rng.random()
        if r < 0.55:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
            yield "text", "POST", "/search", {"text": text, "k": rng.choice((5, 10, 20))}
        elif r < 0.75:
            yield "image", "POST", "/search", {"image": rng.choice(images), "k": 10, "task": "i2i"}
        elif r < 0.85:
            yield "like", "POST", "/search", {"like": rng.choice(IDS), "k": 10}
        elif r < 0.93:
            yield "thumbnail", "GET", f"/items/{quote(rng.choice(IDS), safe='')}/thumbnail", None
        else:
            yield "item", "GET", f"/items/{quote(rng.choice(IDS), safe='')}", None


async def client_loop(client, stream, deadline, budget, latencies, errors):
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        kind, method, url, body = next(stream)
        start = time.perf_counter()
        try:
            answer = await client.request(method, url, json=body)
            ok = answer.status_code == 200 and (method == "GET" or len(answer.json()["hits"]) > 0)
            problem = None if ok else f"{kind} {answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as e:
            problem = f"{kind} {type(e).__name__}: {e}"
        latencies.setdefault(kind, []).append(time.perf_counter() - start)
        if problem:
            errors.append(problem)


async def run_load(url: str):
    stream = requests_mix(random.Random(0))
    latencies, errors, budget = {}, [], [MAX_REQUESTS]
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = time.monotonic()
        deadline = start + SECONDS
        await asyncio.gather(*(client_loop(client, stream, deadline, budget, latencies, errors)
                               for _ in range(CLIENTS)))
        elapsed = time.monotonic() - start
    return latencies, errors, elapsed


def summary(latencies, errors, elapsed, load_before):
    def stats(values):
        ms = np.array(values) * 1000
        return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p90_ms": round(float(np.percentile(ms, 90)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "max_ms": round(float(ms.max()), 2)}
    everything = [v for values in latencies.values() for v in values]
    return {"clients": CLIENTS, "seconds": round(elapsed, 2), "errors": len(errors),
            "rps": round(len(everything) / elapsed, 1), **stats(everything),
            "by_kind": {kind: stats(values) for kind, values in sorted(latencies.items())},
            "setup": {"server": "mmsearch serve (1 process, 2 search threads), tiny Qwen2-VL (hidden 64), "
                                "28 items in 3 Flat shards, CPU", "client": "httpx.AsyncClient, same machine",
                      "cpus": os.cpu_count(), "load_average_1min_before": round(load_before, 2),
                      "python": platform.python_version()}}


def test_load_on_loopback(tmp_path_factory, tiny_dir, tmp_path):
    index = shared_index(tmp_path_factory, tiny_dir)
    server = ServerProcess(index, "--no-access-log", "--threads", "2", log=tmp_path / "server.log")
    try:
        server.wait_ready()
        load_before = os.getloadavg()[0]  # other work on the machine skews the numbers
        latencies, errors, elapsed = asyncio.run(run_load(server.url))
        healthy = httpx.get(server.url + "/healthz", timeout=10).status_code
    finally:
        code = server.stop()
    result = summary(latencies, errors, elapsed, load_before)
    print("\nload test:", json.dumps({k: v for k, v in result.items() if k != "setup"}, indent=1))
    (tmp_path / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    if os.environ.get("MMSEARCH_LOAD_OUT"):
        Path(os.environ["MMSEARCH_LOAD_OUT"]).write_text(json.dumps(result, indent=2) + "\n")
    assert errors == [], errors[:5]
    assert healthy == 200 and code in (0, -15), server.log_text()  # uvicorn re-raises SIGTERM after a clean shutdown
    assert result["requests"] >= 50 and set(result["by_kind"]) == {"text", "image", "like", "thumbnail", "item"}
