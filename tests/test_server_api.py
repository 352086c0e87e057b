"""The HTTP API against the query engine: every search answer equals `Index.search` for the
same query; items, thumbnails, info, tasks, the API key, limits, timeouts, the docs."""
import base64
import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from test_server_support import (COLOURS, ThreadServer, b64_png, draw, png_bytes, require_server_deps,
                                 shared_index)

require_server_deps()

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from mmsearch.errors import InputError  # noqa: E402
from mmsearch.query import open_index  # noqa: E402
from mmsearch.server import Limits, check_bind, create_app, is_loopback  # noqa: E402
from mmsearch.store import Store  # noqa: E402
from mmsearch.tasks import list_tasks  # noqa: E402
from mmsearch.types import Query  # noqa: E402

KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, tiny_dir):
    path = shared_index(tmp_path_factory, tiny_dir)
    CORPUS_ROOT[:] = [path.parent]
    return path


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return tiny_encoder("qwen2_vl")


@pytest.fixture(scope="module")
def index(index_path, encoder):
    with open_index(index_path, encoder=encoder) as opened:
        yield opened


@pytest.fixture(scope="module")
def client(index_path, encoder):
    app = create_app(index_path, encoder=encoder)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_same_hits(answer, hits):
    assert answer.status_code == 200, answer.text
    got = answer.json()["hits"]
    assert [h["id"] for h in got] == [h.id for h in hits]
    assert [h["rank"] for h in got] == [h.rank for h in hits]
    assert [h["score"] for h in got] == pytest.approx([h.score for h in hits], abs=1e-6)
    for h, want in zip(got, hits, strict=True):
        assert h["row"] == want.row and h["shard"] == want.shard
        assert {k: v for k, v in h["metadata"].items()} == public(want.metadata)


def public(metadata):
    """Metadata as the server shows it: the image reference relative to the corpus folder
    (the source's), never the server's absolute path (see tests/test_server_paths.py)."""
    out = dict(metadata)
    if out.get("image") and os.path.isabs(out["image"]):
        out["image"] = Path(out["image"]).relative_to(CORPUS_ROOT[0]).as_posix()
    return out


CORPUS_ROOT = []  # set by the index_path fixture: the folder of the shared corpus


def without(hits, item_id, k):
    """`hits` with the item itself left out, first k, ranks renumbered ("more like this")."""
    return [dataclasses.replace(h, rank=i + 1) for i, h in enumerate(h for h in hits if h.id != item_id)][:k]


def test_healthz_info_tasks(client, index):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["index"]["rows"] == len(index) == 28 and info["index"]["shards"] == 3
    assert info["index"]["faiss"] == "Flat" and info["model"]["dim"] == index.dim
    assert {"colour", "shape", "n"} <= set(info["index"]["columns"])
    assert info["limits"]["max_k"] == Limits().max_k and info["auth"] is False
    tasks = client.get("/tasks").json()
    assert [t["name"] for t in tasks] == [t.name for t in list_tasks()]
    assert {"t2i", "i2i", "composed"} <= {t["name"] for t in tasks}


@pytest.mark.parametrize("kwargs", [{}, {"task": "t2i"}, {"instruction": "Find a picture of it:"},
                                    {"k": 28}, {"k": 40}])
def test_text_search_equals_index_search(client, index, kwargs):
    k = kwargs.get("k", 10)
    answer = client.post("/search", json={"text": "a red circle", **kwargs})
    lib = {key: v for key, v in kwargs.items() if key != "k"}
    assert_same_hits(answer, index.search("a red circle", k=k, **lib))
    body = answer.json()
    assert body["k"] == k and body["took_ms"] > 0 and body["query"]["text"] == "a red circle"


def test_image_search_base64_data_url_and_upload_agree(client, index):
    im = draw("triangle", COLOURS["green"], size=80)
    want = index.search(Query(image=png_bytes(im)), k=7, task="i2i")
    assert_same_hits(client.post("/search", json={"image": b64_png(im), "k": 7, "task": "i2i"}), want)
    data_url = "data:image/png;base64," + b64_png(im)
    assert_same_hits(client.post("/search", json={"image": data_url, "k": 7, "task": "i2i"}), want)
    urlsafe = base64.urlsafe_b64encode(png_bytes(im)).decode().rstrip("=")
    assert_same_hits(client.post("/search", json={"image": urlsafe, "k": 7, "task": "i2i"}), want)
    upload = client.post("/search", data={"k": "7", "task": "i2i"},
                         files={"image": ("q.png", png_bytes(im), "image/png")})
    assert_same_hits(upload, want)


def test_composed_filter_rerank_and_params(client, index):
    im = draw("square", COLOURS["blue"])
    query = Query(text="the same, but red", image=png_bytes(im))
    filt = {"modality": ["image", "image,text"], "n": {"gte": 3, "lt": 300}}
    want = index.search(query, k=6, task="composed", filter=filt, rerank="refine", params={"k_factor": 4})
    answer = client.post("/search", json={"text": "the same, but red", "image": b64_png(im), "k": 6,
                                          "task": "composed", "filter": filt, "rerank": ["refine"],
                                          "params": {"k_factor": 4}})
    assert_same_hits(answer, want)
    assert all(set(h["scores"]) == {"ann", "refine"} for h in answer.json()["hits"])
    form = client.post("/search", data={"text": "the same, but red", "k": "6", "task": "composed",
                                        "filter": '{"modality": ["image", "image,text"], "n": {"gte": 3, "lt": 300}}',
                                        "rerank": "refine", "params": '{"k_factor": 4}'},
                       files={"image": ("q.png", png_bytes(im), "image/png")})
    assert_same_hits(form, want)


def test_more_like_this_uses_the_items_image_or_text(client, index):
    record = index.get(["shapes/ring-purple"])[0]
    picture = index.candidate_image(record)
    assert picture is not None
    assert_same_hits(client.post("/search", json={"like": "shapes/ring-purple", "k": 5}),
                     without(index.search(Query(image=picture), k=6), "shapes/ring-purple", 5))
    assert_same_hits(client.post("/search", json={"like": "shapes/ring-purple", "text": "but green", "k": 5}),
                     without(index.search(Query(image=picture, text="but green"), k=6), "shapes/ring-purple", 5))
    assert_same_hits(client.post("/search", json={"like": "text 2", "k": 5}),
                     without(index.search(Query(text=index.get(["text 2"])[0]["text"]), k=6), "text 2", 5))
    missing = client.post("/search", json={"like": "no-such-item"})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


@pytest.mark.parametrize("item_id", ["shapes/circle-red", "text 3", "café-red-square", "blue-ring+text"])
def test_items_and_thumbnails(client, index, index_path, item_id):
    from urllib.parse import quote

    answer = client.get(f"/items/{quote(item_id, safe='')}")
    assert answer.status_code == 200, answer.text
    record = dict(index.get([item_id])[0])
    assert answer.json() == {"id": record.pop("id"), "metadata": public(record),
                             "thumbnail": f"/items/{quote(item_id, safe='')}/thumbnail"}
    thumb = client.get(answer.json()["thumbnail"])
    if item_id.startswith("text"):
        assert thumb.status_code == 404 and thumb.json()["error"] == "not_found"
        return
    with Store(index_path / "store.lmdb", readonly=True) as store:
        stored = store.get_thumbnail(item_id)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert stored is not None and thumb.content == stored


def test_unknown_and_deleted_items(index_path, encoder, tmp_path):
    from test_server_support import copy_index

    copy = copy_index(index_path, tmp_path / "index")
    with Store(copy / "store.lmdb") as store:
        store.add_tombstones(["shapes/circle-red"])
    app = create_app(copy, encoder=encoder)
    with TestClient(app) as c:
        for url in ("/items/shapes%2Fcircle-red", "/items/shapes%2Fcircle-red/thumbnail", "/items/nope"):
            answer = c.get(url)
            assert answer.status_code == 404 and answer.json()["error"] == "not_found", url
        ids = [h["id"] for h in c.post("/search", json={"text": "red", "k": 28}).json()["hits"]]
        assert len(ids) == 27 and "shapes/circle-red" not in ids


def test_api_key(index_path, encoder):
    app = create_app(index_path, encoder=encoder, api_key=KEY)
    with TestClient(app) as c:
        for url in ("/info", "/tasks", "/items/text%200"):
            denied = c.get(url)
            assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
            assert denied.headers["www-authenticate"] == "Bearer"
            assert c.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            assert c.get(url, headers={"X-API-Key": KEY}).status_code == 200
            assert c.get(url, headers={"X-API-Key": KEY[:-1] + "X"}).status_code == 401
            assert c.get(url, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        assert c.post("/search", json={"text": "x"}).status_code == 401
        assert c.post("/search", json={"text": "x"}, headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/info", headers={"X-API-Key": KEY}).json()["auth"] is True
        for open_url in ("/healthz", "/", "/static/app.js", "/openapi.json"):
            assert c.get(open_url).status_code == 200, open_url


def test_bind_rule_and_key_strength(index_path):
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(InputError, match="api-key"):
            check_bind(host, None)
        check_bind(host, KEY)
    for weak in ("short", "x" * 15, "has space in the key 123", "ключ-ключ-ключ-ключ"):
        with pytest.raises(InputError, match="at least 16"):
            create_app(index_path, api_key=weak)


def test_limits_are_checked():
    with pytest.raises(InputError, match="max_k"):
        Limits(max_k=0)
    with pytest.raises(InputError, match="search_timeout"):
        Limits(search_timeout=-1)
    with pytest.raises(InputError, match="unknown"):
        Limits(rerankers=("refine", "magic"))
    with pytest.raises(InputError, match="max_image_bytes"):
        Limits(max_body_bytes=100, max_image_bytes=200)
    with pytest.raises(InputError, match="unknown limits"):
        Limits().replace(max_kk=3)
    assert Limits().replace(max_k=5).max_k == 5


def test_host_header_allow_list(index_path, encoder):
    app = create_app(index_path, encoder=encoder, allowed_hosts=("127.0.0.1", "localhost"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200
        rebound = c.get("/info", headers={"host": "evil.example:8000"})
        assert rebound.status_code == 400 and "evil.example" in rebound.json()["detail"]


def test_concurrent_searches_are_consistent(index_path, encoder, index):
    queries = [f"a {c} {s}" for c in COLOURS for s in ("circle", "ring")]
    want = {q: [h.id for h in index.search(q, k=8)] for q in queries}
    app = create_app(index_path, encoder=encoder, limits=Limits(threads=3))
    errors = []
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        def worker(offset):
            for q in queries[offset:] + queries[:offset]:
                answer = c.post("/search", json={"text": q, "k": 8})
                if answer.status_code != 200 or [h["id"] for h in answer.json()["hits"]] != want[q]:
                    errors.append((q, answer.status_code, answer.text[:200]))
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


class SlowIndex:
    """The index, with searches that wait for `gate` first."""

    def __init__(self, index):
        self._index, self.gate, self.calls = index, threading.Event(), []

    def search(self, queries, **kwargs):
        self.calls.append(len(queries))
        self.gate.wait(10)
        return self._index.search(queries, **kwargs)

    def __getattr__(self, name):
        return getattr(self._index, name)


def test_timeout_and_busy(index_path, encoder):
    app = create_app(index_path, encoder=encoder, limits=Limits(search_timeout=0.3, threads=1, max_pending=1))
    service = app.state.service
    real, service.index = service.index, SlowIndex(service.index)
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        answers = []
        t = threading.Thread(target=lambda: answers.append(c.post("/search", json={"text": "slow"})))
        t.start()
        while service.pending == 0:
            time.sleep(0.01)
        busy = c.post("/search", json={"text": "second"})
        assert busy.status_code == 503 and busy.json()["error"] == "busy" and busy.headers["retry-after"] == "1"
        t.join()
        assert answers[0].status_code == 504 and answers[0].json()["error"] == "timeout"
        assert c.get("/healthz").status_code == 200
        service.index.gate.set()
        deadline = time.monotonic() + 10
        while service.pending and time.monotonic() < deadline:  # the abandoned search ends, freeing its slot
            time.sleep(0.02)
        service.index = real
        assert c.post("/search", json={"text": "after"}).status_code == 200


def test_waiting_searches_are_batched(index_path, encoder, index):
    """Searches queued behind a busy worker run as one batch per set of arguments, and
    each still gets exactly its own answer."""
    app = create_app(index_path, encoder=encoder, limits=Limits(threads=1, max_batch=4))
    service = app.state.service
    service.index = slow = SlowIndex(service.index)
    bodies = [{"text": f"a {c} ring", "k": 5} for c in COLOURS] + [{"text": "a red ring", "k": 3}] * 2
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        first = threading.Thread(target=lambda: c.post("/search", json={"text": "first"}))
        first.start()
        while not slow.calls:
            time.sleep(0.01)
        answers = {}
        threads = [threading.Thread(target=lambda i=i, b=b: answers.__setitem__(i, c.post("/search", json=b)))
                   for i, b in enumerate(bodies)]
        for t in threads:
            t.start()
        while service._batcher.waiting < len(bodies):
            time.sleep(0.01)
        slow.gate.set()
        for t in threads + [first]:
            t.join()
    assert sorted(slow.calls) == [1, 1, 2, 4]  # the first alone; 5 texts with k=5 as 4 + 1; the k=3 pair
    for i, body in enumerate(bodies):
        assert [h["id"] for h in answers[i].json()["hits"]] == [h.id for h in index.search(body["text"], k=body["k"])]


def test_batcher_retries_a_failed_batch_one_by_one():
    from mmsearch.server.batching import Batcher, SearchArgs
    from mmsearch.server.schemas import SearchRequest

    calls, gate = [], threading.Event()

    def run(args, queries):
        calls.append([q.text for q in queries])
        gate.wait(10)
        if "bad" in [q.text for q in queries]:
            raise InputError("bad query")
        return [q.text.upper() for q in queries]

    batcher = Batcher(run, threads=1, max_batch=8)
    try:
        args = SearchArgs.of(SearchRequest(text="x", k=3))
        futures = [batcher.submit(args, Query(text=t)) for t in ("first", "a", "bad", "b")]
        gate.set()
        assert futures[0].result(10) == "FIRST" and futures[1].result(10) == "A" and futures[3].result(10) == "B"
        with pytest.raises(InputError, match="bad query"):
            futures[2].result(10)
        assert calls[0] == ["first"] or calls[0] == ["first", "a", "bad", "b"]
        assert sum(1 for c in calls if c == ["bad"]) == 1
        assert SearchArgs.of(SearchRequest(text="x", k=3, rerank="Refine")) == \
            SearchArgs.of(SearchRequest(text="y", k=3, rerank=["refine"]))
        assert SearchArgs.of(SearchRequest(text="x", k=3)) != SearchArgs.of(SearchRequest(text="x", k=4))
    finally:
        batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(args, Query(text="late"))


def test_openapi_docs_and_ui_assets(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert {"/items/{item_id}", "/items/{item_id}/thumbnail", "/info", "/healthz", "/tasks"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text
    if "/docs-assets/" in docs.text:  # fastapi-offline installed: the docs need no CDN
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    for bad in ("/static/index.htm", "/static/..%2Fapp.py", "/static/%2e%2e%2f__init__.py", "/docs-assets/x.js"):
        answer = client.get(bad)
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", bad
