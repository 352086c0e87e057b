"""Lexical and hybrid search (issue #26) through the server, the web UI and the CLI: each
answers exactly as in-process `Index.search` with the same mode, and the UI's toggle appears
only for an index that has a lexical index. The corpus plants one rare part code per row."""
import json
import subprocess
import sys

import pytest

import mmsearch
from mmsearch.query import open_index

WORDS = ["valve", "pump", "gasket", "seal", "bolt", "flange", "hose", "clamp"]
QUERIES = ["KV-4807 pump", "flange seal", "the KV-4811 gasket", "clamp"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid-server")
    rows = [{"id": f"part-{i:02d}", "text": f"{WORDS[i % 8]} {WORDS[(3 * i) % 8]} for line {i % 5}",
             "caption": f"part KV-{4800 + i}"} for i in range(30)]
    (root / "parts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, plain = root / "index", root / "plain"
    mmsearch.build_index([root / "parts.jsonl"], out, "mmsearch-tiny", shard_size=12, text_fields="text,caption")
    mmsearch.build_index([root / "parts.jsonl"], plain, "mmsearch-tiny")
    return out, plain


def _same(got, want):
    assert [h["id"] for h in got] == [h.id for h in want]
    assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-5)


@pytest.mark.parametrize("body", [{"mode": "lexical"}, {"mode": "hybrid"}, {"mode": "hybrid", "alpha": 0.3},
                                  {"mode": "hybrid", "fusion": "rrf", "rrf_k": 5}])
def test_the_server_answers_as_in_process_search(built, body):
    from test_server_support import ThreadServer, require_server_deps

    require_server_deps()
    import httpx

    from mmsearch.server import create_app

    out, _ = built
    with open_index(out) as index, ThreadServer(create_app(out)) as server:
        for q in QUERIES:
            answer = httpx.post(f"{server.url}/search", json={"text": q, "k": 5, **body}, timeout=60)
            assert answer.status_code == 200, answer.text
            _same(answer.json()["hits"], index.search(q, k=5, **body))
        if body["mode"] == "lexical":
            top = httpx.post(f"{server.url}/search", json={"text": "KV-4807", "k": 3, **body}, timeout=60).json()
            assert [h["id"] for h in top["hits"]] == ["part-07"]


def test_the_server_names_what_is_wrong(built):
    from test_server_support import ThreadServer, require_server_deps

    require_server_deps()
    import httpx

    from mmsearch.server import create_app

    out, plain = built
    with ThreadServer(create_app(out)) as server:
        bad = httpx.post(f"{server.url}/search", json={"text": "pump", "mode": "bm25"}, timeout=60)
        assert bad.status_code == 422 and "mode" in bad.text
        bad = httpx.post(f"{server.url}/search", json={"text": "pump", "mode": "hybrid", "alpha": 2}, timeout=60)
        assert bad.status_code == 422 and "alpha" in bad.text
    with ThreadServer(create_app(plain)) as server:
        bad = httpx.post(f"{server.url}/search", json={"text": "pump", "mode": "lexical"}, timeout=60)
        assert 400 <= bad.status_code < 500 and "--text-fields" in bad.text


def test_the_web_ui_toggle_searches_by_words(built, tmp_path):
    from test_server_browser import FLAGS
    from test_server_support import ThreadServer, chromium_or_skip, require_server_deps

    require_server_deps()
    from playwright.sync_api import sync_playwright

    from mmsearch.server import create_app

    out, plain = built
    with open_index(out) as index:
        want = [h.id for h in index.search("KV-4811 gasket", k=10, mode="lexical")]
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium_or_skip(),
                                                        headless=True, args=FLAGS)
        try:
            page = context.new_page()
            page.set_default_timeout(90_000)
            with ThreadServer(create_app(out)) as server:
                page.goto(server.url + "/")
                page.wait_for_selector("#mode-label:not([hidden])")
                page.select_option("#mode", "lexical")
                page.fill("#q", "KV-4811 gasket")
                page.click("#go")
                page.wait_for_selector(".card .id")
                shown = page.eval_on_selector_all(".card .id", "ns => ns.map(n => n.textContent)")
                assert shown[:len(want)] == want[:len(shown)] and shown[0] == "part-11"
            with ThreadServer(create_app(plain)) as server:  # no lexical index: no toggle
                page.goto(server.url + "/")
                page.wait_for_function("document.querySelector('#index-info').textContent.includes('items')")
                assert page.is_hidden("#mode-label")  # decided after /info answered, not before
        finally:
            context.close()


def test_the_cli_searches_in_each_mode(built):
    out, _ = built
    run = [sys.executable, "-m", "mmsearch", "search", str(out), "-k", "4", "--json"]
    with open_index(out) as index:
        for flags, kw in ((["--mode", "lexical"], {"mode": "lexical"}), (["--mode", "hybrid"], {"mode": "hybrid"}),
                          (["--mode", "hybrid", "--alpha", "0.7"], {"mode": "hybrid", "alpha": 0.7})):
            found = subprocess.run(run + ["--text", QUERIES[0]] + flags, capture_output=True, text=True)
            assert found.returncode == 0, found.stderr
            _same(json.loads(found.stdout)["hits"], index.search(QUERIES[0], k=4, **kw))
    wrong = subprocess.run(run + ["--text", "pump", "--alpha", "0.5"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--mode hybrid" in wrong.stderr
