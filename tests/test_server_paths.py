"""The server hides its files' absolute paths, "more like this" leaves the item itself
out (over every item), /info counts items per modality, and `mmsearch serve` prints its
address once it answers (a real server process on a free loopback port)."""
import json
import os
import subprocess
from urllib.parse import quote

import pytest

from test_server_support import free_port, mmsearch_command, require_server_deps, write_corpus

require_server_deps()

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from mmsearch.query import open_index  # noqa: E402
from mmsearch.server import create_app  # noqa: E402
from mmsearch.server.paths import PathView  # noqa: E402
from mmsearch.types import Query  # noqa: E402

K = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_dir):
    """A picture/text corpus and a two-page PDF, indexed by absolute paths (so the
    manifest and the image references hold them)."""
    import mmsearch

    root = tmp_path_factory.mktemp("paths-corpus").resolve()
    source = write_corpus(root / "corpus")
    pages = [Image.new("RGB", (120, 160), c) for c in [(250, 250, 250), (200, 220, 240)]]
    pages[0].save(root / "corpus" / "doc.pdf", save_all=True, append_images=pages[1:])
    model = tiny_dir("qwen2_vl")
    mmsearch.build_index([source, root / "corpus" / "doc.pdf"], root / "index", model=str(model), index="Flat",
                         shard_size=11, device="cpu")
    return {"root": root, "index": root / "index", "corpus": root / "corpus", "model": model}


@pytest.fixture(scope="module")
def client(corpus, tiny_encoder):
    app = create_app(corpus["index"], encoder=tiny_encoder("qwen2_vl"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def secrets_of(corpus):
    """Absolute paths no response may contain."""
    paths = {corpus["index"], corpus["corpus"], corpus["root"], corpus["model"]}
    return {str(p) for p in paths} | {os.path.realpath(p) for p in paths}


def assert_no_absolute_path(text, corpus):
    leaked = [s for s in secrets_of(corpus) if s in text]
    assert not leaked, f"{leaked} in {text[:2000]}"


def all_ids(corpus):
    with open_index(corpus["index"]) as index:
        return [r["id"] for r in index.records(list(range(len(index))))]


def test_no_response_holds_an_absolute_path(client, corpus):
    with open_index(corpus["index"]) as index:  # the stored references are absolute: the server hides them
        stored = index.records(list(range(len(index))))
    assert any(str(corpus["corpus"]) in (r["image"] or "") for r in stored)
    bodies = [client.get("/info").text, client.get("/tasks").text]
    for filt in (None, {"modality": "page"}, {"modality": {"has": "image"}}, {"modality": "text"}):
        answer = client.post("/search", json={"text": "a red square", "k": 40, "filter": filt})
        assert answer.status_code == 200, answer.text
        bodies.append(answer.text)
    bodies.append(client.post("/search", json={"like": "doc.pdf#p1", "k": 40}).text)
    for item_id in all_ids(corpus):
        item = client.get("/items/" + quote(item_id, safe=""))
        assert item.status_code == 200, (item_id, item.text)
        bodies.append(item.text)
    bodies.append(client.get("/items/no-such-item").text)
    for text in bodies:
        assert_no_absolute_path(text, corpus)
    images = {h["id"]: h["metadata"]["image"] for h in json.loads(bodies[2])["hits"]}
    assert images["shapes/circle-red"] == "img/circle-red.png"  # as the source wrote it
    assert images["doc.pdf#p2"] == "doc.pdf#p2" and images["text 0"] is None
    info = json.loads(bodies[0])
    assert info["model"]["id"] == corpus["model"].name


def test_path_view_rules():
    view = PathView(["/data/corpus", "/data/corpus/deeper", "/srv/index"])
    assert view.show("/data/corpus/img/a.png") == "img/a.png"
    assert view.show("/data/corpus/deeper/b.png") == "b.png"  # the deepest root wins
    assert view.show("/elsewhere/c.png") == "c.png"  # under no root: the file name
    assert view.show("C:\\photos\\d.jpg") == "d.jpg"
    assert view.show("rel/e.png") == "rel/e.png" and view.show(None) is None
    assert view.show("/data/corpusX/f.png") == "f.png"  # a root is a folder, not a prefix
    meta = view.metadata({"image": "/data/corpus/x.png", "text": "/data/corpus is mine", "note": "/srv/index/y"})
    assert meta == {"image": "x.png", "text": "/data/corpus is mine", "note": "y"}


def test_info_counts_items_per_modality(client):
    info = client.get("/info").json()
    assert info["index"]["modalities"] == {"text": 6, "image": 20, "image,text": 2, "page": 2}
    assert info["modalities"]["vocabulary"] == ["text", "image", "image,text", "page"]
    assert info["modalities"]["has"] == {"text": ["text", "image,text"], "image": ["image", "image,text", "page"]}


@pytest.mark.parametrize("filt,want", [
    ({"modality": "image"}, {"image"}), ({"modality": "page"}, {"page"}),
    ({"modality": {"has": "image"}}, {"image", "image,text", "page"}), ({"modality": {"has": "text"}}, {"text", "image,text"}),
])
def test_modality_filters_over_http(client, filt, want):
    hits = client.post("/search", json={"text": "a blue ring", "k": 40, "filter": filt}).json()["hits"]
    assert hits and {h["metadata"]["modality"] for h in hits} == want
    bad = client.post("/search", json={"text": "x", "filter": {"modality": "images"}})
    assert bad.status_code == 400 and "valid: text, image, image,text, page" in bad.json()["detail"]


def test_more_like_this_leaves_the_item_out_for_every_item(client, corpus, tiny_encoder):
    ids = all_ids(corpus)
    with open_index(corpus["index"], encoder=tiny_encoder("qwen2_vl")) as index:
        for item_id in ids:
            answer = client.post("/search", json={"like": item_id, "k": K})
            assert answer.status_code == 200, (item_id, answer.text)
            hits = answer.json()["hits"]
            assert item_id not in [h["id"] for h in hits]
            assert len(hits) == K and [h["rank"] for h in hits] == list(range(1, K + 1))
            record = index.get([item_id])[0]
            picture = index.candidate_image(record)
            query = Query(image=picture) if picture is not None else Query(text=record["text"])
            want = [h.id for h in index.search(query, k=K + 1) if h.id != item_id][:K]
            assert [h["id"] for h in hits] == want
        every = client.post("/search", json={"like": ids[0], "k": len(ids)}).json()["hits"]
        assert len(every) == len(ids) - 1 and ids[0] not in {h["id"] for h in every}


def test_serve_prints_its_address_once_ready(corpus, tmp_path):
    port = free_port()
    cmd = [*mmsearch_command(), "serve", str(corpus["index"]), "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = proc.stdout.readline().rstrip("\n")  # blocks until the server says it is ready
        assert line == f"mmsearch: serving {corpus['index']} at http://127.0.0.1:{port} (Ctrl+C to stop)", line
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # ready when it says so
        bodies = [httpx.get(url + "/info", timeout=10).text,
                  httpx.post(url + "/search", json={"text": "a red bus", "k": 30}, timeout=60).text,
                  httpx.get(url + "/items/doc.pdf%23p1", timeout=10).text]
        for text in bodies:
            assert_no_absolute_path(text, corpus)
        assert json.loads(bodies[1])["hits"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15), proc.returncode  # uvicorn re-raises SIGTERM after a clean stop
