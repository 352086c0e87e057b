"""Sharded search: the vectorised merge, the shard fan-out (threads or not), and sharded
indexes (exact and ANN, with deletes and filters) against brute force over all vectors."""
import threading
import time

import faiss
import numpy as np
import pytest

from mmsearch.query import open_index
from mmsearch.query.fanout import CostModel, Fanout
from mmsearch.query.merge import merge_results, worst_score
from test_query_support import COLORS, assert_same_knn, brute_force, build_index, clustered, item_meta

N, K = 997, 10
X = clustered(N, seed=11)
XQ = clustered(31, seed=12)
SIZES = [250, 3, 400, 344]  # one shard smaller than k
DELETED = np.arange(0, N, 7)


# --- merge ---------------------------------------------------------------------------------

def _random_part(rng, n, width, keep_max, id_base):
    """A sorted faiss-style result with ties (scores on a coarse grid) and -1 padding."""
    D = np.round(rng.normal(size=(n, width)), 1).astype(np.float32)
    D = -np.sort(-D, axis=1) if keep_max else np.sort(D, axis=1)
    I = id_base + np.argsort(rng.random((n, width)), axis=1).astype(np.int64)
    missing = np.arange(width)[None, :] >= rng.integers(0, width + 1, (n, 1))  # a tail of missing entries
    return np.where(missing, worst_score(keep_max), D).astype(np.float32), np.where(missing, -1, I)


def _merge_oracle(parts, k, keep_max):
    """The scores of the true top k (every valid candidate sorted), and each id's score."""
    n = len(parts[0][0])
    D = np.full((n, k), worst_score(keep_max), np.float32)
    score = {}
    for q in range(n):
        cands = sorted((-d if keep_max else d) for Dp, Ip in parts for d, i in zip(Dp[q], Ip[q]) if i >= 0)[:k]
        D[q, :len(cands)] = [(-c if keep_max else c) for c in cands]
        score.update({(q, int(i)): d for Dp, Ip in parts for d, i in zip(Dp[q], Ip[q]) if i >= 0})
    return D, score


@pytest.mark.parametrize("keep_max", [True, False])
@pytest.mark.parametrize("k", [1, 4, 9, 40])
def test_merge_equals_sorting_every_candidate(keep_max, k):
    rng = np.random.default_rng(k)
    parts = [_random_part(rng, 17, width, keep_max, 1000 * p) for p, width in enumerate((5, 2, 7, 1))]
    D, I = merge_results(parts, k, keep_max)
    Dref, score = _merge_oracle(parts, k, keep_max)
    assert D.shape == I.shape == (17, k) and D.dtype == np.float32 and I.dtype == np.int64
    np.testing.assert_array_equal(D, Dref)  # the same scores in order (ties may pick either id)
    for q in range(17):
        valid = I[q] >= 0
        np.testing.assert_array_equal(valid, [score_ > worst_score(keep_max) if keep_max
                                              else score_ < worst_score(keep_max) for score_ in Dref[q]])
        assert len(set(I[q][valid])) == valid.sum()  # no candidate twice
        assert [score[q, int(i)] for i in I[q][valid]] == list(D[q][valid])  # each id has its own score


def test_merged_blocks_equal_exact_search_over_all_vectors():
    parts, start = [], 0
    for size in SIZES:
        D, pos = faiss.knn(XQ, X[start:start + size], min(K, size), metric=faiss.METRIC_INNER_PRODUCT)
        parts.append((D, pos + start))
        start += size
    assert_same_knn(*merge_results(parts, K, True), *brute_force(X, XQ, K), X, XQ)


# --- fan-out -------------------------------------------------------------------------------

def _block_search(seen):
    """A real per-shard search (brute force over the shard's block of X) recording the
    thread and its OpenMP team size."""
    bounds = [int(b) for b in np.cumsum([0] + SIZES)]

    def search(s, xq):
        seen.append((threading.current_thread().name, faiss.omp_get_max_threads(), len(xq)))
        a, b = bounds[s], bounds[s + 1]
        D, pos = faiss.knn(xq, X[a:b], min(K, b - a), metric=faiss.METRIC_INNER_PRODUCT)
        return D, pos + a
    return search


def _fanout(parallel: bool) -> Fanout:
    cost = CostModel()
    cost.per_query = 1.0 if parallel else 0.0  # a known estimate: always pays / never pays
    return Fanout(workers=2, cost=cost)


@pytest.mark.parametrize("n", [1, 2, 31])
@pytest.mark.parametrize("parallel", [True, False])
def test_fanout_returns_every_shard_for_every_query(n, parallel):
    if parallel and faiss.omp_get_max_threads() < 2:
        pytest.skip("one core: nothing to spread over")
    seen, fanout = [], _fanout(parallel)
    before = faiss.omp_get_max_threads()
    try:
        parts = fanout.map(_block_search(seen), len(SIZES), XQ[:n])
    finally:
        fanout.close()
    expected = [_block_search([])(s, XQ[:n]) for s in range(len(SIZES))]
    for (D, I), (Dref, Iref) in zip(parts, expected):
        np.testing.assert_array_equal(I, Iref)
        np.testing.assert_allclose(D, Dref, rtol=1e-6)
    assert faiss.omp_get_max_threads() == before  # the caller's OpenMP setting is restored
    threads = {name for name, _, _ in seen}
    if parallel:
        assert len(threads) == 2 and all(omp == 1 for _, omp, _ in seen)  # never oversubscribed
        if n >= 2:  # a batch is cut into query slices, each searched on every shard
            assert sorted(m for *_, m in seen) == sorted([n // 2, n - n // 2] * len(SIZES))
    else:
        assert threads == {threading.current_thread().name} and all(m == n for *_, m in seen)


def test_fanout_keeps_to_the_callers_openmp_thread_count():
    seen, fanout, before = [], _fanout(True), faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # a caller that allows one thread gets one
    try:
        fanout.map(_block_search(seen), len(SIZES), XQ[:1])
    finally:
        faiss.omp_set_num_threads(before)
        fanout.close()
    assert {name for name, _, _ in seen} == {threading.current_thread().name}


def test_fanout_raises_a_shard_error_after_every_thread_is_done():
    fanout, finished = _fanout(True), []

    def search(s, xq):
        if s == 0:  # the calling thread's shard fails at once
            raise RuntimeError("shard 0 is broken")
        time.sleep(0.05)  # while the pool thread is still busy
        finished.append(s)
        return np.zeros((len(xq), 1), np.float32), np.zeros((len(xq), 1), np.int64)
    with pytest.raises(RuntimeError, match="shard 0"):
        fanout.map(search, 4, XQ[:1])
    assert sorted(finished) == [1, 3]  # the pool's share (shards 1, 3) was waited for
    fanout.close()


def test_cost_model_spreads_only_work_worth_the_handoff():
    cost = CostModel(handoff=1e-4)
    assert cost.parallel_pays(1, 4, 2)  # nothing measured yet: try, and measure
    cost.observe(4e-6, 1)  # an HNSW-sized search: 4 us per query and shard
    assert not cost.parallel_pays(1, 4, 2) and cost.parallel_pays(1000, 4, 2)
    cost.per_query = 2e-3  # an exact scan of a big shard
    assert cost.parallel_pays(1, 4, 2) and cost.parallel_pays(1, 2, 2)
    assert not cost.parallel_pays(1, 4, 1)  # one worker saves nothing


# --- sharded indexes against brute force -----------------------------------------------------

def _allowed(filt=None):
    """Live rows (tombstones left out) matching an equality / membership filter."""
    mask = np.ones(N, dtype=bool)
    mask[DELETED] = False
    for col, want in (filt or {}).items():
        want = want if isinstance(want, list) else [want]
        mask &= np.array([item_meta(r)[col] in want for r in range(N)])
    return mask


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root, out = tmp_path_factory.mktemp("shard-merge"), {}
    for spec, shards in (("Flat", SIZES), ("HNSW16", 1), ("HNSW16", SIZES), ("IVF16,PQ16x4fs,RFlat", 1),
                         ("IVF16,PQ16x4fs,RFlat", SIZES)):
        path = root / f"{spec.replace(',', '_')}-{len(shards) if isinstance(shards, list) else shards}"
        build_index(path, X, spec, shards=shards, deleted=DELETED)
        out[spec, 1 if shards == 1 else len(SIZES)] = path
    return out


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("n", [1, 31])
@pytest.mark.parametrize("filt", [None, {"color": list(COLORS[:2])}, {"year": 1990}],
                         ids=["deletes", "post-filter", "pre-filter"])  # year 1990: ~3% of rows, an IDSelector
def test_sharded_exact_search_equals_brute_force(built, parallel, n, filt):
    with open_index(built["Flat", len(SIZES)]) as index:
        index._fanout.cost.per_query = 1.0 if parallel else 0.0  # pin the fan-out's choice
        D, I = index.search_vectors(XQ[:n], K, filter=filt)
    assert_same_knn(D, I, *brute_force(X, XQ[:n], K, _allowed(filt)), X, XQ[:n])


def _recall(I, ref):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I, ref)])


@pytest.mark.parametrize("spec, params", [("HNSW16", {"efSearch": 10}),
                                          ("IVF16,PQ16x4fs,RFlat", {"nprobe": 2, "k_factor": 2})])
def test_sharded_ann_recall_matches_one_shard(built, spec, params):
    xq = clustered(300, seed=13)
    _, ref = brute_force(X, xq, K, _allowed())
    recall = {}
    for shards in (1, len(SIZES)):
        with open_index(built[spec, shards]) as index:
            D, I = index.search_vectors(xq, K, params=params)
        assert (I >= 0).all() and not np.isin(I, DELETED).any()  # k live hits, deleted rows never
        recall[shards] = _recall(I, ref)
    assert 0.5 < recall[1] < 1.0  # the ANN is approximate here, so the comparison means something
    assert recall[len(SIZES)] >= recall[1] - 0.02, recall
