"""A lean HTTP/1.1 load generator for `serve_load.py`, run in its own process.

    python benchmarks/loadgen.py URL REQUESTS.json --clients 20 --seconds 15

Each of `clients` keep-alive connections sends the next prepared request as soon as
its previous answer is in (a closed loop, like 20 users clicking as fast as they
can). Requests are rendered to bytes before the clock starts and answers are parsed
only as far as the status, Content-Length and Server-Timing headers, so the client
costs little of the two cores it shares with the server (httpx spends ~1 ms of CPU
per request; this loop about a tenth of that). Prints one JSON object: per request
kind, the latencies, the failures and the server's own timing split.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from typing import Dict, List
from urllib.parse import urlsplit


def render(host: str, method: str, path: str, body) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: loadgen\r\n"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


def parse_timing(value: str) -> Dict[str, float]:
    """``parse;dur=0.31, wait;dur=1.2, batch;desc=4`` -> {"parse": 0.31, "wait": 1.2, "batch": 4.0}."""
    out = {}
    for part in value.split(","):
        name, _, rest = part.strip().partition(";")
        key, _, number = rest.partition("=")
        if key in ("dur", "desc"):
            out[name] = float(number)
    return out


async def connection(host: str, port: int, requests, deadline: float, budget: List[int], out: Dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            kind, raw, search = next(requests)
            start = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status, length, timing = int(lines[0][9:12]), 0, None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.lower()
                if name == "content-length":
                    length = int(value)
                elif name == "server-timing":
                    timing = parse_timing(value)
                elif name == "transfer-encoding":
                    raise RuntimeError("chunked answers are not supported by this client")
            body = await reader.readexactly(length)
            elapsed = time.perf_counter() - start
            record = out.setdefault(kind, {"ms": [], "errors": [], "timing": []})
            record["ms"].append(round(elapsed * 1000, 3))
            if status != 200 or (search and b'"hits":[]' in body.replace(b" ", b"")):
                record["errors"].append(f"{status} {body[:200].decode(errors='replace')}")
            if timing:
                record["timing"].append(timing)
    finally:
        writer.close()


async def run(url: str, requests: list, clients: int, seconds: float, max_requests: int) -> Dict:
    parts = urlsplit(url)
    rendered = [(kind, render(parts.netloc, method, path, body), path == "/search")
                for kind, method, path, body in requests]
    stream = itertools.cycle(rendered)
    out: Dict = {}
    budget = [max_requests]
    start = time.monotonic()
    await asyncio.gather(*(connection(parts.hostname, parts.port, stream, start + seconds, budget, out)
                           for _ in range(clients)))
    return {"seconds": time.monotonic() - start, "kinds": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("requests", help="JSON list of [kind, method, path, body]")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--max-requests", type=int, default=100_000)
    args = p.parse_args()
    with open(args.requests) as f:
        requests = json.load(f)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.url, requests, args.clients, args.seconds, args.max_requests))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
