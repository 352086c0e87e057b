"""Hostile input against a real uvicorn on loopback: every probe gets a 4xx JSON answer
(never a 5xx, never a file from disk), and /healthz answers after each one."""
import json
import struct
import time
import zlib

import pytest

from test_server_support import ThreadServer, b64_png, draw, png_bytes, raw_http, require_server_deps, shared_index

require_server_deps()

import httpx  # noqa: E402

from mmsearch.server import Limits, create_app  # noqa: E402

LIMITS = Limits(max_body_bytes=1 << 20, max_image_bytes=512 << 10, max_image_pixels=4_000_000, body_timeout=1.0,
                rerankers=("refine",))
TRAVERSALS = ["../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "....//....//etc/passwd",
              "..\\..\\windows\\win.ini", "%00", "shapes/../shapes/circle-red", "file:///etc/passwd",
              "http://127.0.0.1:1/x.png", "~/.ssh/id_rsa", "/proc/self/environ"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir, tiny_encoder):
    app = create_app(shared_index(tmp_path_factory, tiny_dir), encoder=tiny_encoder("qwen2_vl"), limits=LIMITS)
    with ThreadServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def check(answer, status, error=None):
    """A JSON error of the expected status, and the server still healthy."""
    assert answer.status_code == status, answer.text[:300]
    body = answer.json()
    assert set(body) >= {"error", "detail"} and isinstance(body["detail"], str) and body["detail"]
    if error is not None:
        assert body["error"] == error, body
    assert "root:" not in answer.text  # nothing of /etc/passwd ever comes back
    healthy = httpx.get(str(answer.url.copy_with(path="/healthz", query=None)), timeout=10)
    assert healthy.status_code == 200


def bomb_png(width: int, height: int) -> bytes:
    """A valid grey PNG of width x height zero pixels, compressed to a few KB without
    ever holding the pixels in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def fake_header_png(width: int, height: int) -> bytes:
    """Only a header claiming a huge image (no pixel data)."""
    good = png_bytes(draw("circle", (200, 0, 0), size=32))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return good[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + good[33:]


@pytest.mark.parametrize("item_id", TRAVERSALS)
def test_traversal_ids(client, item_id):
    from urllib.parse import quote

    for url in (f"/items/{quote(item_id, safe='')}", f"/items/{quote(item_id, safe='')}/thumbnail"):
        check(client.get(url), 404, "not_found")
    check(client.post("/search", json={"like": item_id}), 404, "not_found")


def test_raw_traversal_paths(server):
    for path in (b"/items/../../../../etc/passwd", b"/items/..%2f..%2f..%2fetc%2fpasswd/thumbnail",
                 b"/static/../../../../etc/passwd", b"/static/..%2f..%2fserver%2fapp.py",
                 b"/docs-assets/..%2f..%2f..%2fetc%2fpasswd", b"/../../etc/passwd"):
        status, body = raw_http(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert 400 <= status < 500 and b"root:" not in body, (path, status, body[:200])
        assert httpx.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize("value", TRAVERSALS + ["", "   ", "!!!!", "data:image/png,notbase64", "data:;base64,@@",
                                                "aGVsbG8gd29ybGQ=", "iVBORw0KGgo="])
def test_image_field_never_a_path(client, value):
    answer = client.post("/search", json={"image": value})
    check(answer, 400)
    assert answer.json()["error"] in ("invalid_base64", "invalid_image", "bad_request")


def test_broken_images(client):
    good = png_bytes(draw("ring", (0, 0, 200)))
    import base64

    for data in (good[: len(good) // 2], good[:40] + b"\0" * 100, b"GIF89a" + b"\xff" * 50, b"%PDF-1.4 not an image"):
        check(client.post("/search", json={"image": base64.b64encode(data).decode()}), 400, "invalid_image")
    check(client.post("/search", files={"image": ("x.png", b"", "image/png")}), 400, "invalid_image")


def test_decompression_bombs(client):
    import base64

    bomb = bomb_png(3000, 3000)  # 9 Mpx of zeros in a few KB
    assert len(bomb) < 64 << 10
    for data in (bomb, fake_header_png(100_000, 100_000), fake_header_png(2**31 - 1, 2**31 - 1)):
        check(client.post("/search", json={"image": base64.b64encode(data).decode()}), 413, "image_too_large")
        check(client.post("/search", files={"image": ("b.png", data, "image/png")}), 413, "image_too_large")


def test_oversized_bodies(server, client):
    big = "A" * (LIMITS.max_body_bytes + 10)
    check(client.post("/search", json={"image": big}), 413, "payload_too_large")
    image = "A" * (LIMITS.max_image_bytes * 4 // 3 + 400)  # fits the body, not the image limit
    check(client.post("/search", json={"image": image}), 413, "image_too_large")
    upload = b"\x89PNG" + b"\0" * (LIMITS.max_image_bytes + 10)
    check(client.post("/search", files={"image": ("x.png", upload, "image/png")}), 413, "image_too_large")

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(40):
            yield b"x" * 65536
    check(client.post("/search", content=chunks(), headers={"content-type": "application/json"}), 413,
          "payload_too_large")
    # a huge declared length is refused before any body is read
    status, body = raw_http(server.port, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                                         b"\r\nContent-Length: 10000000000\r\n\r\n{}")
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_slow_body_times_out(server):
    start = time.monotonic()
    status, body = raw_http(server.port, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                         b"application/json\r\nContent-Length: 100\r\n\r\n{\"text\":")
    assert status == 408 and json.loads(body)["error"] == "request_timeout"
    assert time.monotonic() - start < 10
    assert httpx.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize("k", [10**9, 10**30, 101, 0, -1, "ten", "10", True, 1.5, None, [10], {"k": 1}])
def test_bad_k(client, k):
    check(client.post("/search", json={"text": "x", "k": k}), 422, "validation_error")


@pytest.mark.parametrize("body", [b"{", b"[]", b"null", b'"text"', b"42", b"", b"   ", b'{"text": "x",}',
                                  b"[" * 100_000 + b"]" * 100_000, b'{"text": "\xff\xfe"}',
                                  b'{"text": "\\ud800"}', b'{"text": "x", "k": NaN}',
                                  b'{"text": "x", "k": 1' + b"0" * 5000 + b"}",
                                  json.dumps({"text": "x", "filter": {"a": [[[[[[[[1]]]]]]]]}}).encode()])
def test_malformed_json(client, body):
    answer = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500
    check(answer, answer.status_code)


@pytest.mark.parametrize("payload, status", [
    ({"text": "x", "imgae": "typo"}, 422), ({"text": 5}, 422), ({"text": ["a"]}, 422), ({"text": "x" * 5000}, 422),
    ({"text": "x", "filter": "modality=image"}, 422), ({"text": "x", "filter": {"nope": 1}}, 400),
    ({"text": "x", "filter": {"n": {"$where": "1"}}}, 400), ({"text": "x", "filter": {"n": "abc"}}, 400),
    ({"text": "x", "rerank": "vlm"}, 422), ({"text": "x", "rerank": ["evil"]}, 422), ({"text": "x", "rerank": 5}, 422),
    ({"text": "x", "params": {"nprobe": -1}}, 400), ({"text": "x", "params": {"efSearch": 10**9}}, 422),
    ({"text": "x", "params": {"ef_search": 10**9}}, 422), ({"text": "x", "task": "t" * 1000}, 422),
    ({"text": "x", "params": {"evil": 1}}, 400), ({"text": "x", "params": {"nprobe": "a"}}, 422),
    ({"text": "x", "task": "../../etc/passwd"}, 400), ({"text": "x", "task": "t2i", "instruction": "y"}, 400),
    ({"text": "x", "instruction": 7}, 422), ({"like": "x" * 5000}, 422), ({}, 400), ({"text": ""}, 400),
    ({"image": "iVBORw0KGgo=", "like": "text 0"}, 400)])
def test_bad_fields(client, payload, status):
    check(client.post("/search", json=payload), status)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml",
                                          "", "image/png", "multipart/form-data", "multipart/form-data; boundary=zz"])
def test_wrong_content_types(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    answer = client.post("/search", content=b'{"text": "a red bus"}', headers=headers)
    check(answer, answer.status_code)
    assert answer.status_code in (400, 415, 422)


def test_bad_multipart(client):
    png = png_bytes(draw("circle", (0, 0, 0)))
    check(client.post("/search", data={"text": "x"}, files={"other": ("a.png", png, "image/png")}), 400)
    two = [("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))]
    check(client.post("/search", files=two), 400)
    check(client.post("/search", data={"text": "x", "k": "many"}), 422)
    check(client.post("/search", data={"text": "x", "filter": "{not json"}), 400, "invalid_json")
    check(client.post("/search", data={"text": "x", "evil": "1"}), 422)
    check(client.post("/search", data={f"f{i}": "1" for i in range(50)}), 400)


def test_wrong_methods_and_routes(client):
    check(client.get("/search"), 405, "method_not_allowed")
    check(client.put("/search", json={"text": "x"}), 405, "method_not_allowed")
    check(client.delete("/items/text%200"), 405, "method_not_allowed")
    check(client.get("/admin"), 404, "not_found")
    check(client.get("/items/" + "x" * 5000), 422, "validation_error")


def test_still_serving_correctly_afterwards(client):
    answer = client.post("/search", json={"image": b64_png(draw("circle", (214, 40, 40))), "k": 3})
    assert answer.status_code == 200 and len(answer.json()["hits"]) == 3
