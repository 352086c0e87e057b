"""Under concurrency, `mmsearch serve` answers exactly what in-process `Index.search`
does: 20 clients at once send text, image and "more like this" searches to a server
in its own process, whose batcher then encodes many queries together; every hit list
(ids, ranks, scores) must equal the in-process search of that query alone. The load
itself (requests/s, latency, where the time goes) is measured by
`benchmarks/serve_load.py`, not here."""
import asyncio
import random

import pytest

from test_server_support import COLOURS, SHAPES, TEXTS, ServerProcess, b64_png, draw, require_server_deps, shared_index

require_server_deps()

import httpx  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.types import Query  # noqa: E402

CLIENTS = 20
TOL = 1e-4  # a batch pads its queries: scores may move in the last float digits


def same_hits(got: list, want: list) -> bool:
    """Equal ranks and scores (within TOL), and equal ids except that hits whose scores
    tie within TOL may come in either order."""
    if len(got) != len(want) or any(abs(g["score"] - w.score) > TOL for g, w in zip(got, want)):
        return False
    if [g["rank"] for g in got] != [w.rank for w in want]:
        return False
    for i, (g, w) in enumerate(zip(got, want)):
        if g["id"] != w.id:
            tied = {h.id for h in want if abs(h.score - w.score) <= TOL}
            if g["id"] not in tied or len(tied) < 2:
                return False
    return True


def searches(rng: random.Random, n: int) -> list:
    """(body, expected-hits function of the in-process index) pairs: texts of varied k,
    images with the i2i task, and "more like this"."""
    words = [w for t in TEXTS for w in t.split()] + list(COLOURS) + list(SHAPES)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            text, k = " ".join(rng.choice(words) for _ in range(rng.randint(1, 7))), rng.choice((3, 5, 10))
            out.append(({"text": text, "k": k}, lambda index, t=text, k=k: index.search(t, k=k)))
        elif r < 0.85:
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            picture = draw(shape, COLOURS[colour], size=rng.choice((48, 64, 96)))
            out.append(({"image": b64_png(picture), "k": 5, "task": "i2i"},
                        lambda index, p=picture: index.search(Query(image=p), k=5, task="i2i")))
        else:
            item = f"shapes/{rng.choice(SHAPES)}-{rng.choice(list(COLOURS))}"
            out.append(({"like": item, "k": 4}, lambda index, item=item: like(index, item, 4)))
    return out


def like(index, item: str, k: int) -> list:
    """What "more like this" means: the item's image as the query, the item left out."""
    import dataclasses

    picture = index.candidate_image(index.get([item])[0])
    hits = [h for h in index.search(Query(image=picture), k=k + 1) if h.id != item][:k]
    return [dataclasses.replace(h, rank=i + 1) for i, h in enumerate(hits)]


async def ask_all(url: str, bodies: list) -> list:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    queue = list(enumerate(bodies))
    answers = [None] * len(bodies)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def client_loop():
            while queue:
                i, body = queue.pop()
                answers[i] = await client.post("/search", json=body)
        await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))
    return answers


def batch_of(answer) -> int:
    timing = dict(part.strip().split(";", 1) for part in answer.headers["server-timing"].split(","))
    return int(timing["batch"].split("=")[1])


def test_concurrent_answers_equal_in_process_search(tmp_path_factory, tiny_dir, tmp_path):
    path = shared_index(tmp_path_factory, tiny_dir)
    cases = searches(random.Random(0), 240)
    server = ServerProcess(path, "--no-access-log", "--threads", "2", log=tmp_path / "server.log")
    try:
        server.wait_ready()
        answers = asyncio.run(ask_all(server.url, [body for body, _ in cases]))
    finally:
        code = server.stop()
    assert code in (0, -15), server.log_text()  # uvicorn re-raises SIGTERM after a clean shutdown
    index = mmsearch.open_index(path, device="cpu")
    wrong = []
    for (body, expected), answer in zip(cases, answers):
        assert answer.status_code == 200, answer.text[:300]
        hits = answer.json()["hits"]
        if not hits or not same_hits(hits, expected(index)):
            wrong.append((body.get("text") or body.get("like") or "image", hits[:3]))
    assert wrong == []
    assert max(batch_of(a) for a in answers) > 1  # the batcher did combine queries


@pytest.mark.parametrize("got, ok", [
    ([("a", 0.9), ("b", 0.8)], True), ([("b", 0.9), ("a", 0.8)], False), ([("a", 0.9), ("b", 0.7)], False),
    ([("a", 0.9)], False), ([("a", 0.9), ("c", 0.8)], False)])
def test_same_hits_oracle(got, ok):
    """The comparison itself: wrong ids, scores or lengths fail; only ties may swap."""
    from mmsearch.query import Hit

    want = [Hit(rank=1, id="a", score=0.9, scores={}, row=0, shard="0", metadata={}),
            Hit(rank=2, id="b", score=0.8, scores={}, row=1, shard="0", metadata={})]
    assert same_hits([{"rank": i + 1, "id": d, "score": s} for i, (d, s) in enumerate(got)], want) is ok
    tie = [want[0], Hit(rank=2, id="b", score=0.9, scores={}, row=1, shard="0", metadata={})]
    assert same_hits([{"rank": 1, "id": "b", "score": 0.9}, {"rank": 2, "id": "a", "score": 0.9}], tie)
