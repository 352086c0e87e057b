"""A multi-vector (ColQwen2) index end to end: MUVERA FDEs in FAISS, token vectors per shard,
exact MaxSim rerank; held to an oracle that scores every page by brute-force MaxSim over token
matrices the encoder makes outside the index (numpy, no index code), and to the FDE alone."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mmsearch
from mmsearch.errors import InputError
from mmsearch.index_format import load_shard_tokens, read_manifest, verify_index
from mmsearch.indexer.build import add_to_index
from mmsearch.indexer.maintenance import compact, delete_ids

FDE = {"k_sim": 3, "dim_proj": 8, "r_reps": 4}  # a 256-d FDE: small enough for a tiny test
QUERIES = ["a red page", "green stripes", "a blue square on white", "yellow noise", "purple text"]


def _page(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:112, 0:84].astype(np.float32)
    base = np.stack([127 + 120 * np.sin(xx / rng.uniform(4, 20)), 127 + 120 * np.cos(yy / rng.uniform(4, 20)),
                     127 + 120 * np.sin((xx + yy) / rng.uniform(4, 20))], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mv-corpus")
    (root / "img").mkdir()
    lines = []
    for i in range(24):
        _page(i).save(root / "img" / f"{i}.png")
        lines.append(json.dumps({"id": f"p{i:02d}", "image": f"img/{i}.png", "group": "a" if i % 2 else "b"}))
    (root / "pages.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def model(tiny_dir):
    return str(tiny_dir("colqwen2"))


@pytest.fixture(scope="module")
def raw(model):
    return mmsearch.load_encoder(model, device="cpu")


@pytest.fixture(scope="module")
def oracle_tokens(raw, corpus):
    """Every page's token matrix, made by the encoder directly (float32), by id."""
    rows = [json.loads(line) for line in (corpus / "pages.jsonl").read_text().splitlines()]
    items = [mmsearch.Item(id=r["id"], image=str(corpus / r["image"])) for r in rows]
    return dict(zip([r["id"] for r in rows], raw.encode(items, multi_vector=True)))


def _brute_force(query_tokens: np.ndarray, pages: dict, allowed=None) -> list:
    """(id, MaxSim) of every allowed page, best first: sum over query tokens of the max dot."""
    scores = {i: float((query_tokens @ t.T).max(axis=1).sum()) for i, t in pages.items()
              if allowed is None or i in allowed}
    return sorted(scores.items(), key=lambda kv: -kv[1])


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus, model):
    out = tmp_path_factory.mktemp("mv-index") / "index"
    mmsearch.build_index([corpus / "pages.jsonl"], out, model, index="Flat", fde=FDE, shard_size=10)
    return out


def test_the_index_records_its_layout_and_stores_every_page_s_tokens(built, oracle_tokens):
    manifest = read_manifest(built)
    spec = manifest.multi_vector
    assert spec is not None and spec.token_dim == 32 and spec.precision == "float16"
    assert dict(spec.fde) == {**FDE, "seed": 42} and spec.candidates == 200
    assert manifest.model.dim == 4 * 2 ** 3 * 8 and len(manifest.shards) == 3
    assert verify_index(built) == []
    for shard in manifest.shards:
        tokens = load_shard_tokens(built, shard)
        meta = mmsearch.open_index(built).view().shards[manifest.shards.index(shard)].meta
        for row, (pid, n) in enumerate(zip(meta.column("id").to_pylist(), meta.column("n_tokens").to_pylist())):
            want = oracle_tokens[pid]
            assert n == len(want) == tokens.counts()[row]
            assert np.abs(tokens.item(row) - want).max() < 2e-3  # float16 storage


def test_search_equals_brute_force_maxsim(built, raw, oracle_tokens):
    index = mmsearch.open_index(built)
    for q in QUERIES:
        hits = index.search(q, k=5)
        want = _brute_force(raw.encode(q, multi_vector=True)[0], oracle_tokens)[:5]
        assert [h.id for h in hits] == [i for i, _ in want]
        assert np.allclose([h.score for h in hits], [s for _, s in want], atol=2e-2)
        assert set(hits[0].scores) == {"ann", "maxsim"}


def test_the_fde_alone_is_not_the_exact_order(built, raw, oracle_tokens):
    """The oracle must be able to fail: with one candidate reranked (the FDE's own top k), the
    order is the FDE's, and on this corpus that differs from exact MaxSim for some query."""
    index = mmsearch.open_index(built)
    differs = 0
    for q in QUERIES:
        fde_only = [h.id for h in index.search(q, k=5, params={"candidates": 1})]
        exact = [i for i, _ in _brute_force(raw.encode(q, multi_vector=True)[0], oracle_tokens)[:5]]
        differs += fde_only != exact
    assert differs > 0


def test_filters_and_deletes_hold_and_compaction_keeps_tokens_aligned(tmp_path, corpus, model, raw, oracle_tokens):
    out = tmp_path / "index"
    mmsearch.build_index([corpus / "pages.jsonl"], out, model, index="Flat", fde=FDE, shard_size=10,
                         token_precision="int8")
    query = raw.encode(QUERIES[0], multi_vector=True)[0]
    odd = {f"p{i:02d}" for i in range(24) if i % 2}
    index = mmsearch.open_index(out)
    hits = index.search(QUERIES[0], k=4, filter={"group": "a"})
    assert [h.id for h in hits] == [i for i, _ in _brute_force(query, oracle_tokens, odd)[:4]]
    victim = hits[0].id
    delete_ids(out, [victim])
    assert victim not in [h.id for h in index.search(QUERIES[0], k=24)]
    compact(out)
    assert verify_index(out) == []
    after = mmsearch.open_index(out).search(QUERIES[0], k=23)
    want = _brute_force(query, _stored_tokens(out))  # int8: the order of the stored vectors
    assert victim not in _stored_tokens(out) and len(want) == 23
    assert [h.id for h in after] == [i for i, _ in want]
    exact = dict(_brute_force(query, oracle_tokens))
    assert np.allclose([h.score for h in after], [exact[h.id] for h in after], atol=5e-2)  # int8 is close


def _stored_tokens(out) -> dict:
    """Each row's token vectors as the index stores them (decoded to float32), by id."""
    from mmsearch.index_format import open_shard_meta

    found = {}
    for shard in read_manifest(out).shards:
        tokens = load_shard_tokens(out, shard)
        for row, pid in enumerate(open_shard_meta(out, shard).column("id").to_pylist()):
            found[pid] = tokens.item(row)
    return found


def test_sharding_does_not_change_results(tmp_path, corpus, model, built):
    one = tmp_path / "one"
    mmsearch.build_index([corpus / "pages.jsonl"], one, model, index="Flat", fde=FDE, shard_size=1000)
    a, b = mmsearch.open_index(one), mmsearch.open_index(built)
    for q in QUERIES:
        assert [h.id for h in a.search(q, k=8)] == [h.id for h in b.search(q, k=8)]


def test_resume_with_other_layout_is_refused_and_single_vector_models_refuse_its_options(
        tmp_path, corpus, model, built, tiny_dir):
    with pytest.raises(InputError, match="precision"):
        add_to_index(built, [corpus / "pages.jsonl"], token_precision="int8")
    with pytest.raises(InputError, match="multi-vector"):
        mmsearch.build_index([corpus / "pages.jsonl"], tmp_path / "x", tiny_dir("qwen2_vl"), index="Flat",
                             token_precision="int8")
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_cli_builds_searches_and_reports_bytes_per_item(tmp_path, corpus, model, raw, oracle_tokens):
    out = tmp_path / "cli-index"
    run = [sys.executable, "-m", "mmsearch"]
    build = subprocess.run(run + ["index", "build", str(corpus / "pages.jsonl"), "--out", str(out), "--model",
                                  str(model), "--index", "Flat", "--fde", "k_sim=3,dim_proj=8,r_reps=4",
                                  "--token-precision", "int8"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    found = subprocess.run(run + ["search", str(out), "--text", QUERIES[2], "-k", "3", "--json",
                                  "--candidates", "50"], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    ids = [h["id"] for h in json.loads(found.stdout)["hits"]]
    want = _brute_force(raw.encode(QUERIES[2], multi_vector=True)[0], oracle_tokens)
    assert ids == [i for i, _ in want[:3]]
    info = subprocess.run(run + ["index", "info", str(out), "--json"], capture_output=True, text=True)
    per_item = json.loads(info.stdout)["bytes_per_item"]
    n_tokens = sum(len(t) for t in oracle_tokens.values())
    assert per_item["tokens"] >= n_tokens * 32 / len(oracle_tokens)  # int8 codes, plus scales and offsets
    assert per_item["tokens"] < n_tokens * (32 + 4 + 8) / len(oracle_tokens) + 8


def test_the_server_answers_as_in_process_search(built, raw, oracle_tokens):
    from test_server_support import ThreadServer, require_server_deps

    require_server_deps()
    import httpx

    from mmsearch.server import create_app

    index = mmsearch.open_index(built)
    with ThreadServer(create_app(built)) as server:
        for q in QUERIES[:3]:
            answer = httpx.post(f"{server.url}/search", json={"text": q, "k": 5}, timeout=60)
            assert answer.status_code == 200, answer.text
            got = answer.json()["hits"]
            want = index.search(q, k=5)
            assert [h["id"] for h in got] == [h.id for h in want]
            assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
            exact = _brute_force(raw.encode(q, multi_vector=True)[0], oracle_tokens)[:5]
            assert [h["id"] for h in got] == [i for i, _ in exact]


def test_match_map_credits_each_query_token_to_the_patch_it_picked(built, raw, corpus):
    page = Image.open(corpus / "img" / "5.png").convert("RGB")
    rows, (gh, gw) = raw.patch_grid(page)
    assert len(rows) == gh * gw and np.all(np.diff(rows) == 1)  # one block of image tokens
    tokens = raw.encode(mmsearch.Item(id="p05", image=page), multi_vector=True)[0]
    query = raw.encode(QUERIES[1], multi_vector=True)[0]
    sim = query @ tokens.T
    want = np.zeros(gh * gw)
    for j, best in enumerate(sim.argmax(axis=1)):  # each query token's best page token
        if rows[0] <= best <= rows[-1]:
            want[best - rows[0]] += sim[j, best]
    got = mmsearch.open_index(built).match_map(QUERIES[1], "p05")
    assert got["grid"] == [gh, gw] and want.sum() > 0
    assert np.allclose(got["heat"], want, atol=2e-2)
    assert got["score"] == pytest.approx(sim.max(axis=1).sum(), abs=2e-2)
    with pytest.raises(InputError, match="no item"):
        mmsearch.open_index(built).match_map(QUERIES[1], "nope")


def test_the_web_ui_draws_where_the_query_matched(built, tmp_path):
    """In headless Chromium: a text search on a multi-vector index overlays each page's match map,
    red where the API's heat is highest and untouched where it is zero."""
    from test_server_browser import FLAGS
    from test_server_support import ThreadServer, chromium_or_skip, require_server_deps

    require_server_deps()
    import httpx
    from playwright.sync_api import sync_playwright

    from mmsearch.server import create_app

    with ThreadServer(create_app(built)) as server, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium_or_skip(),
                                                        headless=True, args=FLAGS, viewport={"width": 1280, "height": 860})
        try:
            page = context.new_page()
            page.set_default_timeout(90_000)
            page.goto(server.url + "/")
            page.fill("#q", QUERIES[0])
            page.click("#go")
            page.wait_for_selector(".card canvas.heat")
            first = page.eval_on_selector(".card .id", "n => n.textContent")
            heat = httpx.get(f"{server.url}/items/{first}/matches", params={"text": QUERIES[0]}, timeout=60).json()
            rows, cols = heat["grid"]
            values = np.array(heat["heat"])
            cells = [int(values.argmax()), int(values.argmin())]
            pixels = page.evaluate("""([rows, cols, cells]) => {
                const canvas = document.querySelector('.card canvas.heat');
                const img = canvas.parentElement.querySelector('img');
                const plain = document.createElement('canvas');
                plain.width = canvas.width; plain.height = canvas.height;
                plain.getContext('2d').drawImage(img, 0, 0);
                return cells.map(i => {
                    const x = Math.floor(((i % cols) + 0.5) * canvas.width / cols);
                    const y = Math.floor((Math.floor(i / cols) + 0.5) * canvas.height / rows);
                    return [Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data),
                            Array.from(plain.getContext('2d').getImageData(x, y, 1, 1).data)];
                });
            }""", [rows, cols, cells])
            for cell, (tinted, plain) in zip(cells, pixels):
                # red (255, 40, 0) drawn over the page at alpha 0.65 * heat / peak; each channel moves
                # toward it by that alpha (8-bit rounding: a tolerance of a few levels)
                alpha = 0.65 * max(values[cell], 0) / values.max()
                want = [round(p + alpha * (c - p)) for p, c in zip(plain[:3], (255, 40, 0))]
                assert np.abs(np.array(tinted[:3]) - want).max() <= 3, (cell, alpha, tinted, plain)
            assert values.max() > values.min()  # the hottest and coldest cells differ in tint
            page.screenshot(path=str(tmp_path / "matches.png"))
        finally:
            context.close()


def test_compaction_without_stored_vectors_rebuilds_the_fdes_from_the_tokens(tmp_path, corpus, model):
    """An IVF-PQ shard cannot give its vectors back and no vectors.npy was kept: compaction
    makes each kept page's FDE again from its stored tokens, and search still works."""
    out = tmp_path / "index"
    mmsearch.build_index([corpus / "pages.jsonl"], out, model, index="IVF2,PQ4x4fs", fde=FDE, store_vectors=False)
    delete_ids(out, ["p03"])
    assert compact(out)["rows_removed"] == 1
    assert verify_index(out) == []
    hits = mmsearch.open_index(out).search(QUERIES[0], k=23, params={"nprobe": 2})
    assert len(hits) == 23 and "p03" not in {h.id for h in hits}


def test_index_add_appends_pages_with_their_tokens(tmp_path, corpus, model, raw, oracle_tokens):
    rows = (corpus / "pages.jsonl").read_text().splitlines()
    out = tmp_path / "index"
    abs_rows = [json.dumps({**json.loads(r), "image": str(corpus / json.loads(r)["image"])}) for r in rows]
    (tmp_path / "first.jsonl").write_text("\n".join(abs_rows[:15]) + "\n")
    (tmp_path / "rest.jsonl").write_text("\n".join(abs_rows[15:]) + "\n")
    mmsearch.build_index([tmp_path / "first.jsonl"], out, model, index="Flat", fde=FDE)
    result = add_to_index(out, [tmp_path / "rest.jsonl"])
    assert result.indexed == 9 and read_manifest(out).total_rows == 24 and verify_index(out) == []
    hits = mmsearch.open_index(out).search(QUERIES[3], k=24)
    want = _brute_force(raw.encode(QUERIES[3], multi_vector=True)[0], oracle_tokens)
    assert [h.id for h in hits] == [i for i, _ in want]


def test_hybrid_fuses_exact_maxsim_with_bm25(tmp_path, corpus, model, raw, oracle_tokens):
    """The vector arm of a hybrid search on a multi-vector index is the exact MaxSim order (not
    the FDE's): RRF of brute-force MaxSim and the lexical arm, recomputed here."""
    rows = [json.loads(r) for r in (corpus / "pages.jsonl").read_text().splitlines()]
    lines = [json.dumps({**r, "image": str(corpus / r["image"]), "caption": f"scan {n} code ZX{n % 7:03d}"})
             for n, r in enumerate(rows)]
    (tmp_path / "pages.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "index"
    mmsearch.build_index([tmp_path / "pages.jsonl"], out, model, index="Flat", fde=FDE, shard_size=10,
                         text_fields=("caption",))
    index = mmsearch.open_index(out)
    query = "ZX003 " + QUERIES[2]
    lexical = [h.id for h in index.search(query, k=24, mode="lexical")]
    assert set(lexical) == {f"p{n:02d}" for n in range(24) if n % 7 == 3}
    exact = [i for i, _ in _brute_force(raw.encode(query, multi_vector=True)[0], oracle_tokens)]
    fused = {i: 1 / (60 + exact.index(i) + 1) + (1 / (60 + lexical.index(i) + 1) if i in lexical else 0)
             for i in exact}
    want = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    hits = index.search(query, k=5, mode="hybrid")
    assert [h.id for h in hits] == [i for i, _ in want]
    assert np.allclose([h.score for h in hits], [s for _, s in want])
    assert set(hits[0].scores) == {"ann", "lexical", "rrf"}


def test_auto_index_and_image_queries_equal_brute_force(tmp_path, corpus, model, raw, oracle_tokens):
    """`index="auto"` calibrates on the FDEs like any vectors; a page image as the query is
    embedded as the query side's token matrix and reranked by exact MaxSim."""
    out = tmp_path / "auto"
    mmsearch.build_index([corpus / "pages.jsonl"], out, model, index="auto", fde=FDE)
    assert read_manifest(out).multi_vector is not None and verify_index(out) == []
    index = mmsearch.open_index(out)
    for i in (3, 11):
        page = Image.open(corpus / "img" / f"{i}.png").convert("RGB")
        hits = index.search(page, k=5)
        want = _brute_force(raw.encode(mmsearch.Query(image=page), multi_vector=True)[0], oracle_tokens)[:5]
        assert [h.id for h in hits] == [i for i, _ in want] and hits[0].id == f"p{i:02d}"
        assert np.allclose([h.score for h in hits], [s for _, s in want], atol=2e-2)
