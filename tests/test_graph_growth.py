"""A graph index's shards grow (indexer/graph_growth.py): one graph however many commits.

The oracle is faiss itself: one HNSW graph given the same rows in the same batches, on one
thread (graph insertion is otherwise not deterministic), must return exactly what the
grown index returns. Brute force checks that no row is lost or moved."""
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmsearch.index_format import TokenMatrix, open_shard_index, read_manifest, shards_path, store_path
from mmsearch.indexer import graph_growth, maintenance, planner
from mmsearch.indexer import writer as writer_module
from mmsearch.indexer.vectors import _row, index_vectors
from mmsearch.indexer.writer import ShardWriter
from mmsearch.query import open_index
from mmsearch.store import Store

N, D, BATCH = 2_400, 24, 600
EF24 = faiss.SearchParametersHNSW(efSearch=24)


@pytest.fixture
def one_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(n, d=D, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids(n, start=0):
    return [f"d{i}" for i in range(start, start + n)]


def _one_graph(batches):
    """faiss's own single graph, the batches inserted in order (ids: their global rows)."""
    index = faiss.IndexIDMap(faiss.index_factory(D, "HNSW32", faiss.METRIC_INNER_PRODUCT))
    start = 0
    for b in batches:
        index.add_with_ids(b, np.arange(start, start + len(b), dtype=np.int64))
        start += len(b)
    return index


def _search_ids(ix, xq, k=10):
    _, rows = ix.search_vectors(xq, k, params={"efSearch": 24})
    return [[r["id"] for r in ix.records(list(q))] for q in rows], rows


def test_shards_of_a_graph_grow_into_one_graph_equal_to_faiss_building_it(tmp_path, one_thread):
    x, xq = _unit(N), _unit(200, seed=1)
    manifest = index_vectors(tmp_path / "idx", x, _ids(N), index="HNSW32", shard_size=BATCH)
    assert [(s.id_start, s.rows) for s in manifest.shards] == [(0, N)]
    assert sorted(p.name for p in shards_path(tmp_path / "idx").iterdir()) == [manifest.shards[0].name]
    ix = open_index(tmp_path / "idx")
    ids, rows = _search_ids(ix, xq)
    oracle = _one_graph([x[i:i + BATCH] for i in range(0, N, BATCH)])
    _, expected = oracle.search(xq, 10, params=EF24)
    np.testing.assert_array_equal(rows, expected)
    assert ids == [[f"d{r}" for r in q] for q in expected]  # rows still name their ids
    np.testing.assert_allclose(ix.vectors(list(range(N))), x, atol=1e-3)  # vectors.npy grew alike


def _build_and_compare(path, x, xq):
    """(rows equal, scores equal) of the grown index against faiss's one graph."""
    index_vectors(path, x, _ids(N), index="HNSW32", shard_size=BATCH)
    scores, rows = open_index(path).search_vectors(xq, 10, params={"efSearch": 24})
    oracle = _one_graph([x[i:i + BATCH] for i in range(0, N, BATCH)])
    expected_scores, expected = oracle.search(xq, 10, params=EF24)
    return np.array_equal(rows, expected), np.allclose(scores, expected_scores, rtol=0, atol=1e-6)


def test_the_oracle_rejects_a_growth_that_rebuilds_the_graph_from_the_stored_vectors(tmp_path, one_thread,
                                                                                     monkeypatch):
    """The comparison above must be able to fail: the obvious other implementation, a fresh
    graph of the last shard's vectors.npy (float16) plus the new rows, is caught."""
    x, xq = _unit(N), _unit(200, seed=1)
    assert _build_and_compare(tmp_path / "right", x, xq) == (True, True)
    real = graph_growth.grow

    def rebuilt(index_dir, manifest, name, graph, meta, vectors, tokens):
        last = manifest.shards[-1]
        fresh = faiss.IndexIDMap(faiss.index_factory(D, "HNSW32", faiss.METRIC_INNER_PRODUCT))
        stored = np.asarray(graph_growth.load_shard_vectors(index_dir, last), np.float32)
        fresh.add_with_ids(stored, np.arange(last.id_start, last.id_end, dtype=np.int64))
        return real(index_dir, manifest, name, (last.name, fresh), meta, vectors, tokens)

    monkeypatch.setattr(graph_growth, "grow", rebuilt)
    assert _build_and_compare(tmp_path / "planted", x, xq) != (True, True)


def _writer(out, store, manifest=None, **kw):
    plan = planner.plan("HNSW32", D, N, None, BATCH)
    return ShardWriter(out, store, read_manifest(out).model if manifest else _model(), {}, plan, shard_size=BATCH,
                       store_vectors=True, train_size=1, recall_target=0.95, extra={}, manifest=manifest, **kw)


def _model():
    from mmsearch.index_format import ModelInfo
    return ModelInfo(id="external", backbone="external", dim=D, dtype="float32")


def _add(w, x, start, meta=None):
    w.add([_row(i, None, meta or {}) for i in _ids(len(x), start)], x)


def test_adding_to_an_index_later_grows_its_graph_from_disk_and_keeps_deletes(tmp_path, one_thread):
    """A new writer (index add, a resumed build) reads the last graph from disk and grows it;
    a row deleted before keeps its tombstone; nothing of the first build is lost."""
    out, x = tmp_path / "idx", _unit(N)
    with Store(store_path(out)) as store:
        w = _writer(out, store)
        _add(w, x[:1200], 0)
        w.finish()
    maintenance.delete_ids(out, ["d5"])
    with Store(store_path(out)) as store:
        w = _writer(out, store, manifest=read_manifest(out))
        _add(w, x[1200:], 1200)
        manifest = w.finish()
    assert [(s.id_start, s.rows) for s in manifest.shards] == [(0, N)]
    ix = open_index(out)
    _, rows = ix.search_vectors(x, 1, params={"efSearch": 64})
    found = rows[:, 0]
    assert 5 not in found and (found == np.arange(N))[np.arange(N) != 5].mean() > 0.99
    assert [r["id"] for r in ix.get(["d0", "d1999"])] == ["d0", "d1999"] and ix.get(["d5"]) == [None]
    # faiss's own: the graph of the first build saved and read back (its level generator
    # starts again from its seed on reading), then the new rows added
    oracle = faiss.deserialize_index(faiss.serialize_index(_one_graph([x[:600], x[600:1200]])))
    oracle.add_with_ids(x[1200:1800], np.arange(1200, 1800, dtype=np.int64))
    oracle.add_with_ids(x[1800:], np.arange(1800, N, dtype=np.int64))
    xq = _unit(100, seed=2)  # the grown graph on disk, searched by faiss alone (no tombstone logic)
    _, mine = open_shard_index(out, manifest.shards[0]).search(xq, 10, params=EF24)
    np.testing.assert_array_equal(mine, oracle.search(xq, 10, params=EF24)[1])


def test_clashing_metadata_or_no_memory_keep_shards_apart_and_lose_nothing(tmp_path, monkeypatch):
    out, x = tmp_path / "idx", _unit(N)
    with Store(store_path(out)) as store:
        w = _writer(out, store)
        _add(w, x[:600], 0, {"year": 1999})
        _add(w, x[600:1200], 600, {"year": "late nineties"})  # int column now text: cannot join
        w.finish()
    monkeypatch.setattr(planner, "join_budget", lambda: 0)  # no memory to grow into
    with Store(store_path(out)) as store:
        w = _writer(out, store, manifest=read_manifest(out))
        _add(w, x[1200:], 1200, {"year": 2001})
        manifest = w.finish()
    assert [(s.id_start, s.rows) for s in manifest.shards] == [(0, 600), (600, 600), (1200, 600), (1800, 600)]
    ix = open_index(out)
    _, rows = ix.search_vectors(x, 1, params={"efSearch": 64})
    assert (rows[:, 0] == np.arange(N)).mean() > 0.99
    assert [r["year"] for r in ix.get(["d0", "d600", "d1200"])] == [1999, "late nineties", 2001]


def test_a_crash_before_the_grown_shard_is_listed_leaves_the_index_as_it_was(tmp_path, monkeypatch):
    out, x = tmp_path / "idx", _unit(1200)
    with Store(store_path(out)) as store:
        w = _writer(out, store)
        _add(w, x[:600], 0)
        w.finish()
    before = read_manifest(out)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(writer_module, "write_manifest", crash)
    with Store(store_path(out)) as store, pytest.raises(OSError):
        w = _writer(out, store, manifest=read_manifest(out))
        _add(w, x[600:], 600)
        w.finish()
    monkeypatch.undo()
    assert read_manifest(out).shards == before.shards
    ix = open_index(out)
    _, rows = ix.search_vectors(x[:600], 1, params={"efSearch": 64})
    assert (rows[:, 0] == np.arange(600)).mean() > 0.99


@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_token_matrices_concatenate_as_one_packing_of_all_items(precision):
    rng = np.random.default_rng(0)
    items = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in rng.integers(1, 6, size=9)]
    whole = TokenMatrix.pack(items, precision)
    parts = TokenMatrix.concat([TokenMatrix.pack(items[:4], precision), TokenMatrix.pack(items[4:], precision)])
    np.testing.assert_array_equal(parts.offsets, whole.offsets)
    np.testing.assert_array_equal(parts.values, whole.values)
    for i in range(len(items)):
        np.testing.assert_array_equal(parts.item(i), whole.item(i))
