"""The lexical index (issue #26): tantivy BM25 per shard, built by the real indexer with the
built-in model, searched through `Index.search(mode=...)`.

Oracles: a textbook BM25 (global IDF, k1 1.2, b 0.75) computed here over the corpus for
documents of equal length (where the shards' own average lengths do not matter); the
unfiltered ranking cut by the filter (for filtered search); ids planted in one row (for
deletes, compaction, add and resume). Planted wrong rules (per-shard IDF) fail the oracle."""
import json
import math
from collections import Counter

import numpy as np
import pytest

import mmsearch
from mmsearch import index_format as fmt
from mmsearch.errors import InputError
from mmsearch.indexer.build import add_to_index
from mmsearch.indexer.maintenance import compact, delete_ids
from mmsearch.query import open_index

pytestmark = pytest.mark.filterwarnings("ignore:index .* was built before embedding families")
VOCAB = [f"w{i}" for i in range(12)]
N = 41


def corpus(n=N, seed=0):
    """Rows of 6 terms each (equal lengths), one rare `zq<i>` per row, `title` and `group`
    columns; the common terms are skewed so that shards see different document frequencies."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = np.linspace(3, 1, len(VOCAB)) if i < n // 2 else np.linspace(1, 3, len(VOCAB))
        words = list(rng.choice(VOCAB, size=4, p=p / p.sum()))
        rows.append({"id": f"doc-{i:03d}", "text": " ".join(words + [f"zq{i}"]), "title": f"t{i % 5}",
                     "group": "a" if i % 3 else "b"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build(tmp_path, rows, shard_size, name="index", **kw):
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / name
    mmsearch.build_index([str(src)], out, model="mmsearch-tiny", shard_size=shard_size,
                         text_fields=kw.pop("text_fields", "text,title"), **kw)
    return out


def oracle_bm25(rows, query, k1=1.2, b=0.75):
    """Scores of every row for `query` over text + title (the row's lexical document)."""
    docs = [Counter((r["text"] + " " + r["title"]).split()) for r in rows]
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / len(docs)
    scores = np.zeros(len(docs))
    for term in query.split():
        df = sum(1 for d in docs if term in d)
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.get(term, 0)
            scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[i] / avg)) if tf else 0
    return scores


QUERIES = ["w0 w11", "w3 w5 zq7", "w11 w11 w2", "zq30 w0", "t3 w6"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lexical")
    rows = corpus()
    return rows, build(tmp, rows, shard_size=9)


def test_common_words_score_but_do_not_match_alone_and_codes_match_whole(tmp_path):
    """Lucene's CommonTermsQuery rule: "doc" is on every row, so it adds its (tiny) BM25 to the row
    that matches "kv7" but makes no other row a hit; a query of common words only matches as usual.
    A code of several terms ("bd-7") matches only rows holding all of them. A plain OR of the terms
    (the planted wrong rule) would return all 20 rows for each query."""
    rows = [{"id": f"r{i:02d}", "text": f"doc kv{i} part bd {i}", "title": "x"} for i in range(20)]
    rows[3]["text"] = "doc kv3 part bd 77"
    path = build(tmp_path, rows, shard_size=7)
    with open_index(path) as index:
        hits = index.search("doc kv7", k=10, mode="lexical")
        assert [h.id for h in hits] == ["r07"]
        assert hits[0].score == pytest.approx(oracle_bm25(rows, "doc kv7")[7], rel=1e-4)
        assert len(index.search("doc part", k=30, mode="lexical")) == 20
        hits = index.search("BD-7", k=30, mode="lexical")
        assert [h.id for h in hits] == ["r07"]
        assert hits[0].score == pytest.approx(oracle_bm25(rows, "bd 7")[7], rel=1e-4)


@pytest.mark.parametrize("query", QUERIES)
def test_sharded_scores_equal_global_bm25(sharded, query):
    rows, path = sharded
    want = oracle_bm25(rows, query)
    with open_index(path) as index:
        assert len(index.shards) == 5
        hits = index.search(query, k=10, mode="lexical")
    assert hits, query
    # each hit scores what the oracle gives its row, and the scores are the oracle's top 10 (ties in any order:
    # float32 rounding differs between shards)
    assert [h.score for h in hits] == pytest.approx(sorted(want[want > 0], reverse=True)[:10], rel=1e-4)
    for h in hits:
        assert h.score == pytest.approx(want[int(h.id[4:])], rel=1e-4)


def test_planted_per_shard_idf_disagrees_with_the_oracle(sharded):
    """What tantivy scores shard by shard, unboosted: the oracle above would fail it."""
    rows, path = sharded
    query = "w0 w11"
    want = oracle_bm25(rows, query)
    manifest = fmt.read_manifest(path)
    naive = {}
    for shard in manifest.shards:
        index = fmt.open_lexical(path, shard)
        searcher = index.searcher()
        for score, address in searcher.search(index.parse_query(query, [fmt.BODY]), 50).hits:
            row = searcher.fast_field_values(fmt.ROW, [address])[0] + shard.id_start
            naive[rows[row]["id"]] = score
    assert max(abs(naive[r["id"]] - w) for r, w in zip(rows, want) if w > 0) > 0.05


def test_deleted_item_never_comes_back_lexically_then_compaction_carries_the_index(tmp_path):
    rows = corpus()
    path = build(tmp_path, rows, shard_size=9)
    with open_index(path) as index:
        assert index.search("zq12", k=3, mode="lexical")[0].id == "doc-012"
    delete_ids(path, ["doc-012"])
    with open_index(path) as index:
        for mode in ("lexical", "hybrid"):
            assert "doc-012" not in [h.id for h in index.search("zq12 w0", k=N, mode=mode)]
    report = compact(path)
    assert report["rows_removed"] == 1
    assert fmt.verify_index(path) == []
    manifest = fmt.read_manifest(path)
    assert all(fmt.has_lexical(s) for s in manifest.shards)
    with open_index(path) as index:
        assert index.search("zq12", k=5, mode="lexical") == []
        # the rewritten shard's rows are searchable at their new rows, with the same global scores
        want = oracle_bm25([r for r in rows if r["id"] != "doc-012"], "w3 zq13")
        hits = index.search("w3 zq13", k=1, mode="lexical")
        assert hits[0].id == "doc-013" and hits[0].score == pytest.approx(want.max(), rel=1e-4)


@pytest.mark.parametrize("filt", [{"group": "b"}, {"title": ["t1", "t4"]}, {"group": "b", "title": "t2"}])
def test_filters_apply_to_both_arms(sharded, filt):
    rows, path = sharded
    allowed = {r["id"] for r in rows if all(r[c] in (v if isinstance(v, list) else [v]) for c, v in filt.items())}
    with open_index(path) as index:
        everything = index.search("w0 w5 w11", k=N, mode="lexical")
        lexical = index.search("w0 w5 w11", k=4, mode="lexical", filter=filt)
        assert [h.id for h in lexical] == [h.id for h in everything if h.id in allowed][:4]
        for fusion in ("rrf", "score"):
            hybrid = index.search("w0 w5 w11", k=len(allowed) + 3, mode="hybrid", fusion=fusion, filter=filt)
            assert {h.id for h in hybrid} == allowed  # every allowed row, and nothing else


def test_hybrid_hits_keep_each_arms_score(sharded):
    _, path = sharded
    with open_index(path) as index:
        hits = index.search("zq20", k=5, mode="hybrid")
    assert hits[0].id == "doc-020"
    assert set(hits[0].scores) == {"ann", "lexical", "rrf"}
    assert hits[0].score == pytest.approx(hits[0].scores["rrf"])


def test_instructed_query_matches_words_by_its_text_only(sharded):
    _, path = sharded
    with open_index(path) as index:
        plain = index.search("zq5", k=3, mode="lexical")
        instructed = index.search(mmsearch.Query(text="zq5", instruction="w0 w1 w2 zq9"), k=3, mode="lexical")
    assert [h.id for h in instructed] == [h.id for h in plain] == ["doc-005"]


def test_add_and_resume_keep_the_lexical_index(tmp_path):
    rows = corpus()
    path = build(tmp_path, rows[:30], shard_size=8)
    # rerun of the same job: resumes (nothing to add), same rows
    build(tmp_path, rows[:30], shard_size=8)
    extra = write_jsonl(tmp_path / "more.jsonl", rows[30:])
    add_to_index(path, [str(extra)])
    assert fmt.verify_index(path) == []
    with open_index(path) as index:
        assert len(index) == N
        assert [h.id for h in index.search("zq35", k=2, mode="lexical")] == ["doc-035"]
        hits = index.search("w1 w7", k=N, mode="lexical")
    want = oracle_bm25(rows, "w1 w7")
    assert len(hits) == int((want > 0).sum())
    for h in hits:
        assert h.score == pytest.approx(want[int(h.id[4:])], rel=1e-4)


def test_verify_names_a_corrupted_lexical_file(tmp_path):
    path = build(tmp_path, corpus(12), shard_size=100)
    shard = fmt.read_manifest(path).shards[0]
    victim = next(f for f in shard.files if f.startswith(fmt.LEXICAL_DIR + "/") and f.endswith(".idx"))
    target = fmt.shard_dir(path, shard) / victim
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = fmt.verify_index(path)
    assert any(victim in p and "sha256" in p for p in problems), problems


def test_index_without_text_fields_says_how_to_get_one(tmp_path):
    path = build(tmp_path, corpus(6), shard_size=100, text_fields=())
    assert not any(fmt.has_lexical(s) for s in fmt.read_manifest(path).shards)
    with open_index(path) as index:
        with pytest.raises(InputError, match="--text-fields"):
            index.search("zq1", mode="lexical")
        assert index.search("zq1", k=2)  # vector search as before


@pytest.mark.parametrize("bad", ["id", ["text", 3]])
def test_bad_text_fields_name_the_input(tmp_path, bad):
    with pytest.raises(InputError, match="text_fields"):
        build(tmp_path, corpus(4), shard_size=10, text_fields=bad)


def test_pdf_pages_are_searchable_by_their_text_layer(tmp_path):
    from mmsearch.datasets.hybrid_docs import HybridDocOptions, make_hybrid_docs

    make_hybrid_docs(tmp_path / "docs", HybridDocOptions(pages=5, pages_per_pdf=5, seed=1))
    queries = [json.loads(line) for line in (tmp_path / "docs" / "queries.jsonl").read_text().splitlines()]
    out = tmp_path / "index"
    mmsearch.build_index([str(tmp_path / "docs" / "pdfs" / "docs-00.pdf")], out, model="mmsearch-tiny",
                         text_fields="page_text", source_options={"dpi": 56})
    with open_index(out) as index:
        record = index.get(["docs-00.pdf#p2"])[0]
        assert "Inspector" in record["page_text"]
        for q in (q for q in queries if q["type"] == "quoted"):
            assert index.search(q["text"], k=1, mode="lexical")[0].id == q["corpus-id"], q


def test_hybrid_scores_lexical_hits_beyond_the_vector_window(tmp_path):
    """A row only the lexical arm finds, ranked past the vector arm's window (depth 50), still gets
    its own vector score (the exact inner product) and so wins RRF over the vector arm's first hit;
    without it the two would tie at 1 / 61."""
    rows = [{"id": f"r{i:03d}", "text": f"{VOCAB[i % 12]} {VOCAB[(5 * i) % 12]} zq{i}", "title": "x"}
            for i in range(120)]
    path = build(tmp_path, rows, shard_size=50)
    with open_index(path) as index:
        vectors = index.vectors(np.arange(120))
        for i in range(120):  # a row whose own code ranks it past the window by vector search
            query = f"zq{i}"
            ranked = [h.id for h in index.search(query, k=120)]
            if ranked.index(rows[i]["id"]) >= 60:
                break
        else:
            pytest.skip("no row ranks past the window for its own code")
        xq = index.encoder.encode([mmsearch.Query(text=query)], show_progress=False)[0]
        hits = index.search(query, k=5, mode="hybrid")
        assert hits[0].id == rows[i]["id"]
        assert hits[0].scores["ann"] == pytest.approx(float(vectors[i] @ xq), abs=1e-4)
        assert hits[0].scores["rrf"] == pytest.approx(1 / 61 + 1 / (60 + 51))


def test_index_info_counts_the_lexical_folder_as_one_kind(sharded):
    from mmsearch.indexer.maintenance import describe

    _, path = sharded
    per_item = describe(path)["bytes_per_item"]
    assert per_item["lexical"] > 0 and not any(k.startswith("lexical/") for k in per_item)
    assert per_item["total"] == pytest.approx(sum(v for k, v in per_item.items() if k != "total"), abs=0.5)
