"""Index.search_vectors against brute force: shards, index types, params, threads."""
import threading

import faiss
import numpy as np
import pytest

from mmsearch import index_format as fmt
from mmsearch.errors import IndexFormatError, InputError
from mmsearch.query import SearchParams, open_index
from mmsearch.query.params import build_faiss_params
from test_query_support import TEST_MODEL, assert_same_knn, brute_force, build_index, clustered

N, K = 997, 10  # odd sizes on purpose
X = clustered(N, seed=3)
XQ = clustered(23, seed=4)
TEST_MODEL_16 = fmt.ModelInfo(id="test/vectors", backbone="qwen2_vl", dim=16, dtype="float32")
EXACT = {"nprobe": 64, "efSearch": 1000, "k_factor": 64}  # enough to make every ANN exact here


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """{(spec, shards): path}, built once."""
    root, out = tmp_path_factory.mktemp("query-search"), {}
    for spec, shard_counts in (("Flat", (1, 3, 7)), ("HNSW16", (3,)), ("IVF16,Flat", (1, 3)),
                               ("IVF16,PQ16x4fs,RFlat", (3,))):
        for shards in shard_counts:
            path = root / f"{spec.replace(',', '_')}-{shards}"
            build_index(path, X, spec, shards=shards, search_params={"nprobe": 2} if "IVF" in spec else None)
            out[spec, shards] = path
    return out


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_flat_matches_brute_force(indexes, shards):
    with open_index(indexes["Flat", shards]) as index:
        assert len(index) == N and len(index.shards) == shards
        D, I = index.search_vectors(XQ, K)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (len(XQ), K)
    assert_same_knn(D, I, *brute_force(X, XQ, K), X, XQ)


def test_sharded_equals_single_exact_index(indexes):
    with open_index(indexes["Flat", 1]) as one, open_index(indexes["Flat", 7]) as seven:
        D1, I1 = one.search_vectors(XQ, 50)
        D7, I7 = seven.search_vectors(XQ, 50)
    assert_same_knn(D7, I7, D1, I1, X, XQ)


@pytest.mark.parametrize("key", [("HNSW16", 3), ("IVF16,Flat", 1), ("IVF16,Flat", 3),
                                 ("IVF16,PQ16x4fs,RFlat", 3)])
def test_ann_indexes_are_exact_with_generous_params(indexes, key):
    with open_index(indexes[key]) as index:
        D, I = index.search_vectors(XQ, K, params=EXACT)
    assert_same_knn(D, I, *brute_force(X, XQ, K), X, XQ)


def test_k_beyond_rows_pads_with_minus_one(indexes):
    with open_index(indexes["Flat", 3]) as index:
        D, I = index.search_vectors(XQ[:2], N + 5)
    assert I.shape == (2, N + 5) and (I[:, :N] >= 0).all() and (I[:, N:] == -1).all()
    assert (D[:, N:] == -np.finfo(np.float32).max).all()
    assert sorted(I[0, :N].tolist()) == list(range(N))


def test_per_call_params_change_results_not_the_index(indexes):
    with open_index(indexes["IVF16,Flat", 3]) as index:
        inner = [s._inner for s in index.shards]
        before = [faiss.downcast_index(i).nprobe for i in inner]
        Dlow, _ = index.search_vectors(XQ, K, params={"nprobe": 1})
        Dhigh, _ = index.search_vectors(XQ, K, params=SearchParams(nprobe=16))
        Ddefault, _ = index.search_vectors(XQ, K)  # the manifest's nprobe=2
        assert [faiss.downcast_index(i).nprobe for i in inner] == before
    exact, _ = brute_force(X, XQ, K)
    np.testing.assert_allclose(Dhigh, exact, atol=1e-5)
    assert (Dlow.sum(1) <= Dhigh.sum(1) + 1e-4).all() and not np.allclose(Dlow, Dhigh)
    assert not np.allclose(Ddefault, Dlow) or not np.allclose(Ddefault, Dhigh)


def test_faiss_params_tree_reaches_every_level():
    index = faiss.index_factory(16, "IVF4,PQ4x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    sel = faiss.IDSelectorRange(0, 5)
    params, keep = build_faiss_params(index, SearchParams(nprobe=3, k_factor=7), sel)
    assert isinstance(params, faiss.IndexRefineSearchParameters) and params.k_factor == 7
    ivf = [p for p in keep if isinstance(p, faiss.SearchParametersIVF)]
    assert len(ivf) == 1 and ivf[0].nprobe == 3 and ivf[0].sel is not None and params.sel is None
    assert build_faiss_params(index, SearchParams()) == (None, [])


def test_l2_metric(tmp_path):
    x = clustered(211, d=16, seed=9) * 3
    build_index(tmp_path / "l2", x, "Flat", shards=3, metric="l2", model=TEST_MODEL_16)
    with open_index(tmp_path / "l2") as index:
        assert not index.keep_max
        D, I = index.search_vectors(x[:5] + 0.01, 7)
    assert_same_knn(D, I, *brute_force(x, x[:5] + 0.01, 7, metric="l2"), x, x[:5] + 0.01, metric="l2")


def test_concurrent_searches_match_sequential(indexes):
    with open_index(indexes["IVF16,Flat", 3]) as index:
        xq = clustered(64, seed=11)
        params = [{"nprobe": 1 + i % 8} for i in range(16)]
        expected = [index.search_vectors(xq, K, params=p) for p in params]
        results, errors = [None] * 16, []
        barrier = threading.Barrier(16)

        def work(i):
            try:
                barrier.wait()
                for _ in range(5):
                    results[i] = index.search_vectors(xq, K, params=params[i],
                                                      filter={"color": "red"} if i % 4 == 0 else None)
                    if i % 4:
                        np.testing.assert_array_equal(results[i][1], expected[i][1])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        sequential = index.search_vectors(xq, K, params=params[0], filter={"color": "red"})
        np.testing.assert_array_equal(results[0][1], sequential[1])


def test_bad_inputs_name_the_problem(indexes):
    with open_index(indexes["Flat", 1]) as index:
        with pytest.raises(InputError, match=r"shape \(n, 64\).*xq\[None, :\]"):
            index.search_vectors(XQ[0], K)
        with pytest.raises(InputError, match="k=0"):
            index.search_vectors(XQ, 0)
        with pytest.raises(InputError, match="unknown search parameters.*nprobe"):
            index.search_vectors(XQ, K, params={"n_probe": 3})
        with pytest.raises(InputError, match="nprobe"):
            index.search_vectors(XQ, K, params={"nprobe": 0})
        with pytest.raises(InputError, match="search_vectors"):
            index.search(XQ[0])
    with pytest.raises(IndexFormatError, match="not an mmsearch index"):
        open_index(indexes["Flat", 1] / "shards")


def test_rows_hydrate_and_get(indexes):
    with open_index(indexes["Flat", 7]) as index:
        records = index.records([996, 0, 500])
        assert [r["id"] for r in records] == ["item-996", "item-0", "item-500"]
        assert records[0]["color"] == "green" and records[1]["tag"] is None
        assert index.get(["item-3", "nope"])[0]["text"] == "caption 3"
        assert index.get(["nope"]) == [None]
        np.testing.assert_allclose(index.vectors([3, 996]), X[[3, 996]], atol=1e-3)
        with pytest.raises(InputError, match="not in this index"):
            index.records([N])



def test_an_open_index_follows_manifest_replacements(tmp_path):
    x = clustered(150, seed=12)
    manifest = build_index(tmp_path / "grow", x[:100], "Flat", shards=2)
    with open_index(tmp_path / "grow") as index:
        first = index.shards[0]
        assert len(index) == 100 and index.search_vectors(x[120:121], 1)[1][0, 0] != 120
        rows = np.arange(100, 150, dtype=np.int64)  # a new shard, committed by a new manifest
        shard = fmt.new_shard_index(tmp_path / "grow", manifest)
        shard.add_with_ids(x[100:], rows)
        meta = fmt.build_meta_table([f"item-{r}" for r in rows], ["text"] * 50, [None] * 50, [None] * 50)
        info = fmt.write_shard(tmp_path / "grow", fmt.shard_name(2), shard, rows, meta)
        fmt.write_manifest(tmp_path / "grow", manifest.with_shard(info))
        assert index.search_vectors(x[120:121], 1)[1][0, 0] == 120
        assert len(index) == 150 and index.shards[0] is first  # unchanged shards are reused


def test_query_package_imports_only_the_core():
    import ast
    import pathlib

    allowed = {"mmsearch.index_format", "mmsearch.store", "mmsearch.encoders", "mmsearch.encoders.pooling",
               "mmsearch.types", "mmsearch.tasks", "mmsearch.images", "mmsearch.errors",
               "mmsearch.multivector"}  # layer 0: numpy-only late-interaction math
    root = pathlib.Path(open_index.__code__.co_filename).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.startswith("mmsearch"):
                assert node.module in allowed, f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mmsearch") for a in node.names), path.name


@pytest.mark.parametrize("spec", ["Flat", "HNSW16"])
def test_shards_whose_faiss_ids_are_permuted(tmp_path, spec):
    """write_shard accepts vectors added in any order; labels and selectors must follow."""
    x, xq = clustered(180, seed=13), clustered(7, seed=14)
    manifest = fmt.Manifest.create(TEST_MODEL, fmt.FaissSpec(spec))
    for number, (a, b) in enumerate([(0, 71), (71, 180)]):
        rows = np.arange(a, b, dtype=np.int64)
        perm = np.random.default_rng(number).permutation(len(rows))
        index = fmt.new_shard_index(tmp_path, manifest)
        index.add_with_ids(x[rows[perm]], rows[perm])
        meta = fmt.build_meta_table([f"item-{r}" for r in rows], ["text"] * len(rows), [None] * len(rows),
                                    [None] * len(rows), [{"odd": bool(r % 2)} for r in rows])
        manifest = manifest.with_shard(fmt.write_shard(tmp_path, fmt.shard_name(number), index, rows, meta, x[rows]))
    fmt.write_manifest(tmp_path, manifest)
    odd = np.arange(180) % 2 == 1
    with open_index(tmp_path) as index:
        assert_same_knn(*index.search_vectors(xq, 9, params=EXACT), *brute_force(x, xq, 9), x, xq)
        assert_same_knn(*index.search_vectors(xq, 9, filter={"odd": True}, params=EXACT),
                        *brute_force(x, xq, 9, odd), x, xq)
        few = np.isin(np.arange(180), [3, 150, 151])  # selective: an IDSelector in permuted label space
        assert_same_knn(*index.search_vectors(xq, 9, filter={"id": ["item-3", "item-150", "item-151"]}),
                        *brute_force(x, xq, 9, few), x, xq)
        np.testing.assert_allclose(index.vectors([5, 100], exact=True), x[[5, 100]], atol=1e-3)
