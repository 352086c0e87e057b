"""IVF shards joined into one index at open (mmsearch.query.joined).

The oracle is faiss itself: the same vectors in a one-shard index built from the same
trained template, searched by faiss's own code (no mmsearch in between). A join that
mislabels rows (a refine stage's positions not shifted per shard), drops or duplicates
codes, or mispacks fast-scan blocks returns other ids than that index.
"""
import faiss
import numpy as np
import pytest

from mmsearch.index_format import open_shard_index, read_manifest
from mmsearch.indexer.maintenance import compact, delete_ids
from mmsearch.indexer.vectors import index_vectors
from mmsearch.query import open_index

N, D = 3000, 32
# (factory, params): fast-scan blocks with a refine stage (the `auto` kind), plain lists, SQ codes
CASES = [("IVF32,PQ8x4fs,RFlat", {"nprobe": 3, "k_factor": 4}), ("IVF32,Flat", {"nprobe": 2}),
         ("IVF32,SQ8", {"nprobe": 4})]
SHARD_SIZE = 1100  # three shards of 1100, 1100 and 800 rows: list lengths not multiples of a block


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((24, D)).astype(np.float32)
    x = centres[rng.integers(0, 24, N)] + 0.4 * rng.standard_normal((N, D)).astype(np.float32)
    q = centres[rng.integers(0, 24, 60)] + 0.4 * rng.standard_normal((60, D)).astype(np.float32)
    faiss.normalize_L2(x)
    faiss.normalize_L2(q)
    return x, q


def _build(path, x, factory, shard_size):
    return index_vectors(path, x, [f"i{i}" for i in range(len(x))], index=factory, shard_size=shard_size,
                         train_size=len(x))


def _one_faiss_index(path, x):
    """The oracle: the index's trained template filled with every row, searched by faiss alone."""
    index = faiss.read_index(str(path / "trained.faiss"))
    if not isinstance(index, faiss.IndexIVF):  # a refine stage takes no ids: map them
        index = faiss.IndexIDMap(index)
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index


def _faiss_params(index, params):
    ivf = faiss.SearchParametersIVF(nprobe=params["nprobe"])
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        return faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]), base_index_params=ivf)
    return ivf


@pytest.mark.parametrize("factory,params", CASES)
def test_joined_shards_answer_as_one_index(tmp_path, data, factory, params):
    x, q = data
    manifest = _build(tmp_path / "sharded", x, factory, SHARD_SIZE)
    assert len(manifest.shards) == 3
    oracle = _one_faiss_index(tmp_path / "sharded", x)
    D0, I0 = oracle.search(q, 10, params=_faiss_params(oracle, params))

    with open_index(tmp_path / "sharded") as index:
        D, I = index.search_vectors(q, 10, params=params)
        assert index.view().joined() is not None, "three IVF shards of one template must be joined"
        assert np.array_equal(I, I0)
        np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)
    with open_index(tmp_path / "sharded", join_shards=False) as apart:
        assert apart.view().joined() is None


@pytest.mark.parametrize("factory,params", CASES[:1])
def test_joined_shards_with_filters_deletes_and_compaction(tmp_path, data, factory, params):
    """Filters and tombstones apply to the joined rows as to the shards; probing every list
    makes the answer exact, so it must equal brute force over the allowed rows."""
    x, q = data
    path = tmp_path / "idx"
    _build(path, x, factory, SHARD_SIZE)
    gone = [f"i{i}" for i in range(0, N, 3)]
    delete_ids(path, gone)
    allowed = np.ones(N, bool)
    allowed[::3] = False
    exhaustive = dict(params, nprobe=32, k_factor=N)

    def brute(mask, k=10):
        rows = np.flatnonzero(mask)
        _, pos = faiss.knn(q, x[rows], k, metric=faiss.METRIC_INNER_PRODUCT)
        return rows[pos]

    with open_index(path) as index:
        _, I = index.search_vectors(q, 10, params=exhaustive)
        assert index.view().joined() is not None
        assert np.array_equal(I, brute(allowed))
        wanted = [f"i{i}" for i in range(1, N, 50)]  # a few rows: the pre-filter path
        _, I = index.search_vectors(q, 10, filter={"id": {"in": wanted}}, params=exhaustive)
        few = np.zeros(N, bool)
        few[1::50] = True
        assert np.array_equal(I, brute(few & allowed))
        # default knobs: every hit is an allowed row, and k of them come back
        _, I = index.search_vectors(q, 10, params=params)
        assert (I >= 0).all() and allowed[I].all()

    compact(path)
    manifest = read_manifest(path)
    assert sum(s.rows for s in manifest.shards) == allowed.sum() and len(manifest.shards) == 3
    with open_index(path) as index, open_index(path, join_shards=False) as apart:
        D, I = index.search_vectors(q, 10, params=exhaustive)
        assert index.view().joined() is not None
        D1, I1 = apart.search_vectors(q, 10, params=exhaustive)  # every list, every candidate: exact
        assert np.array_equal(I, I1)
        np.testing.assert_allclose(D, D1, rtol=1e-6)
        ids = {index.records([r])[0]["id"] for r in I.ravel()}
        assert not ids & set(gone)


def test_shards_of_other_templates_or_kinds_are_not_joined(tmp_path, data, monkeypatch):
    """Graph shards (kept apart when they cannot grow as one, `indexer.graph_growth`) are not joined."""
    from mmsearch.indexer import planner

    x, _ = data
    monkeypatch.setattr(planner, "join_budget", lambda: 0)
    _build(tmp_path / "hnsw", x, "HNSW16", SHARD_SIZE)
    with open_index(tmp_path / "hnsw") as index:
        assert len(index.shards) == 3 and index.view().joined() is None


def test_shards_too_big_for_memory_are_searched_one_by_one(tmp_path, data, monkeypatch):
    """The joined copy lives in RAM: shards whose files exceed the budget are not joined, and
    search still answers (shard by shard, exactly when every list is probed)."""
    import mmsearch.query.view as view_module

    x, q = data
    _build(tmp_path / "idx", x, "IVF32,Flat", SHARD_SIZE)
    monkeypatch.setattr(view_module, "join_budget", lambda: 1000)
    with open_index(tmp_path / "idx") as index:
        D, I = index.search_vectors(q, 10, params={"nprobe": 32})
        assert index.view().joined() is None
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert np.array_equal(I, truth)


def test_search_defaults_are_retuned_on_the_joined_index(tmp_path, data):
    """Shards are searched joined, so the build re-tunes on the joined index once it has grown
    1.5x past the rows the defaults were tuned on (here: the second shard, 2,200 rows), with
    rows of it hidden from the search as queries. Tuning on the new shard alone (the rule
    before joining) would record 1,100 rows."""
    x, q = data
    path = tmp_path / "idx"
    manifest = index_vectors(path, x, [f"i{i}" for i in range(N)], index="IVF32,PQ8x4fs,RFlat",
                             shard_size=SHARD_SIZE, train_size=1000)
    calibration = manifest.faiss.calibration
    assert calibration["rows"] == 2 * SHARD_SIZE and calibration["held_out"] == "rows of the index hidden from search"
    assert calibration["recall_at_10"] >= 0.955
    with open_index(path) as index:
        assert index.search_vectors(q, 10)[1].shape == (len(q), 10) and index.view().joined() is not None


def test_rows_added_later_retune_the_defaults_as_a_build_does(tmp_path, data):
    """`index add` (and a resumed build) starts a writer on the committed manifest: it re-tunes
    on the joined index once the rows outgrow the ones the defaults were tuned on, as the
    build that made the index would have. Without that, the 1,100-row tuning would stay."""
    from mmsearch.index_format import store_path
    from mmsearch.indexer import planner
    from mmsearch.indexer.vectors import _row
    from mmsearch.indexer.writer import ShardWriter
    from mmsearch.store import Store

    x, q = data
    path, factory = tmp_path / "idx", "IVF32,PQ8x4fs,RFlat"
    first = index_vectors(path, x[:SHARD_SIZE], [f"i{i}" for i in range(SHARD_SIZE)], index=factory,
                          shard_size=SHARD_SIZE, train_size=SHARD_SIZE)
    assert first.faiss.calibration["rows"] < SHARD_SIZE
    with Store(store_path(path)) as store:
        writer = ShardWriter(path, store, first.model, {}, planner.plan(factory, D, N, None, SHARD_SIZE),
                             shard_size=SHARD_SIZE, store_vectors=True, train_size=SHARD_SIZE, recall_target=0.95,
                             extra={}, manifest=read_manifest(path))
        writer.add([_row(f"i{i}", None, {}) for i in range(SHARD_SIZE, N)], x[SHARD_SIZE:])
        manifest = writer.finish()
    calibration = manifest.faiss.calibration
    assert calibration["rows"] == 2 * SHARD_SIZE and calibration["held_out"] == "rows of the index hidden from search"
    assert calibration["recall_at_10"] >= 0.95
