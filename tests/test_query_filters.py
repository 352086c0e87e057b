"""Filters and tombstones against brute force over the allowed rows."""
import numpy as np
import pytest

from mmsearch import index_format as fmt
from mmsearch.errors import InputError
from mmsearch.query import open_index
from mmsearch.query.filters import parse_filter
from mmsearch.store import Store
from test_query_support import (COLORS, MODALITIES, assert_same_knn, brute_force, build_index, clustered,
                                item_meta)

N, K = 997, 10
X = clustered(N, seed=5)
XQ = clustered(17, seed=6)
DELETED = np.array([3, 10, 11, 400, 401, 402, 996])
SPECS = ("Flat", "HNSW16", "IVF16,Flat", "IVF16,PQ16x4fs,RFlat")
META = [item_meta(r) for r in range(N)]


def allowed(predicate):
    mask = np.array([predicate(r, META[r]) for r in range(N)])
    mask[DELETED] = False
    return mask


FILTERS = [  # (filter, python predicate over (row, metadata)); selective ones first
    ({"year": 1993, "color": "red"}, lambda r, m: m["year"] == 1993 and m["color"] == "red"),
    ({"price": {"gte": 10, "lt": 10.5}}, lambda r, m: 10 <= m["price"] < 10.5),
    ({"tag": None}, lambda r, m: m["tag"] is None),
    ({"color": ["red", "blue"]}, lambda r, m: m["color"] in ("red", "blue")),
    ({"modality": "image"}, lambda r, m: MODALITIES[r % 3] == "image"),
    ({"year": {"gt": 1995}, "tag": {"in": ["t1", "t2"]}, "modality": ["text", "image,text"]},
     lambda r, m: m["year"] > 1995 and m["tag"] in ("t1", "t2") and MODALITIES[r % 3] != "image"),
    ({"color": {"ne": "white"}}, lambda r, m: m["color"] != "white"),
    ({"id": "item-42"}, lambda r, m: r == 42),
]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    root = tmp_path_factory.mktemp("query-filters")
    out = {}
    for spec in SPECS:  # low nprobe / efSearch defaults: the fallbacks must still find k
        out[spec] = root / spec.replace(",", "_")
        build_index(out[spec], X, spec, shards=3, deleted=DELETED,
                    search_params={"nprobe": 1} if "IVF" in spec else None)
    return out


@pytest.mark.parametrize("filt,predicate", FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_filters_match_brute_force_on_flat(indexes, filt, predicate):
    mask = allowed(predicate)
    with open_index(indexes["Flat"]) as index:
        D, I = index.search_vectors(XQ, K, filter=filt)
    assert_same_knn(D, I, *brute_force(X, XQ, K, mask), X, XQ)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("filt,predicate", [FILTERS[0], FILTERS[3], FILTERS[6]], ids=["rare", "two-fifths", "most"])
def test_every_index_type_returns_k_allowed_hits(indexes, spec, filt, predicate):
    mask = allowed(predicate)
    with open_index(indexes[spec]) as index:
        D, I = index.search_vectors(XQ, K, filter=filt)
    want = min(K, int(mask.sum()))
    assert ((I >= 0).sum(axis=1) == want).all(), (spec, filt, (I >= 0).sum(axis=1))
    assert mask[I[I >= 0]].all()
    if spec == "Flat" or "RFlat" in spec and mask.sum() < 40:  # exact scores wherever the scan is exhaustive
        assert_same_knn(D, I, *brute_force(X, XQ, K, mask), X, XQ)


def test_tombstones_never_come_back(indexes):
    with open_index(indexes["Flat"]) as index:
        D, I = index.search_vectors(X[DELETED], 5)  # each deleted row's own vector as the query
        assert not np.isin(I, DELETED).any()
        assert_same_knn(D, I, *brute_force(X, X[DELETED], 5, allowed(lambda r, m: True)), X, X[DELETED])
        assert index.get([f"item-{DELETED[0]}"]) == [None]


def test_deletions_after_open_are_seen(tmp_path):
    x = clustered(101, seed=8)
    build_index(tmp_path / "i", x, "Flat", shards=2)
    with open_index(tmp_path / "i") as index:
        _, I = index.search_vectors(x[:3], 1)
        assert I[:, 0].tolist() == [0, 1, 2]
        with Store(tmp_path / "i" / fmt.STORE_DIR) as store:
            store.add_tombstones(["item-1", "item-60"])
        _, I = index.search_vectors(x[[1, 60]], 3)
        assert not np.isin(I, [1, 60]).any()
        with Store(tmp_path / "i" / fmt.STORE_DIR) as store:
            store.clear_tombstones(["item-1"])
        _, I = index.search_vectors(x[[1]], 1)
        assert I[0, 0] == 1


def test_nothing_allowed_gives_minus_one(indexes):
    with open_index(indexes["HNSW16"]) as index:
        D, I = index.search_vectors(XQ[:2], K, filter={"color": "purple"})
        assert (I == -1).all() and (D == -np.finfo(np.float32).max).all()
        _, I = index.search_vectors(XQ[:2], K, filter={"color": []})
        assert (I == -1).all()


def test_filter_errors_name_column_and_options(indexes):
    with open_index(indexes["Flat"]) as index:
        with pytest.raises(InputError, match=r"\['colour'\] are not in this index; columns: .*'color'"):
            index.search_vectors(XQ, K, filter={"colour": "red"})
        with pytest.raises(InputError, match=r"unknown operators \['between'\]; valid: .*'gte'"):
            index.search_vectors(XQ, K, filter={"year": {"between": [1, 2]}})
        with pytest.raises(InputError, match=r"'year' \(int64\): cannot apply eq 'x'"):
            index.search_vectors(XQ, K, filter={"year": "x"})
        with pytest.raises(InputError, match="expected a dict"):
            index.search_vectors(XQ, K, filter=[("year", 1)])
        with pytest.raises(InputError, match="cannot compare with None"):
            index.search_vectors(XQ, K, filter={"year": {"gt": None}})
    assert parse_filter({}) is None and parse_filter(None) is None


def test_filter_masks_are_reused_and_colors_cover_rows(indexes):
    with open_index(indexes["Flat"]) as index:
        first = index.view().masks(parse_filter({"color": "red"}))
        assert index.view().masks(parse_filter({"color": "red"})) is first
        total = sum(m.count for c in COLORS for m in index.view().masks(parse_filter({"color": c})))
        assert total == N - len(DELETED)
