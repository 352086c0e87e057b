"""Vectorised MaxSim against a plain per-page loop (the oracle), for float32, float16 and
int8 storage, odd sizes, several blocks; brute-force top-k and rerank against the oracle's
ranking; and the case that zero padding gets wrong (all similarities negative)."""
import numpy as np
import pytest

from mmsearch.multivector import TokenStore, exhaustive_search, flatten_sets, maxsim_scores, rerank
from mmsearch.multivector import maxsim

DIM = 24


def pages(seed=0, n=37):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, n)  # odd sizes, single-token pages too
    return flatten_sets([rng.standard_normal((k, DIM)).astype(np.float32) for k in lengths])


def oracle(query, store: TokenStore, page):
    """MaxSim of one page, by a loop, in float64 from the stored (dequantized) rows."""
    a, b = store.offsets[page], store.offsets[page + 1]
    rows = store.tokens[a:b].astype(np.float64)
    if store.scales is not None:
        rows = rows * store.scales[a:b, None]
    return sum(max(float(q @ row) for row in rows) for q in query.astype(np.float64))


@pytest.fixture(params=["float32", "float16", "int8"])
def store(request):
    return TokenStore.from_float(*pages(), storage=request.param)


@pytest.mark.parametrize("block_cells", [1 << 24, 50])  # one block; many blocks (1-2 pages each)
def test_scores_match_the_loop(store, monkeypatch, block_cells):
    monkeypatch.setattr(maxsim, "_BLOCK_CELLS", block_cells)
    rng = np.random.default_rng(1)
    query = rng.standard_normal((7, DIM)).astype(np.float32)
    candidates = np.r_[rng.permutation(store.n_sets)[:20], 3, 3, 0, store.n_sets - 1]  # any order, repeats
    got = maxsim_scores(query, store, candidates)
    want = [oracle(query, store, c) for c in candidates]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_int8_stays_close_to_float32():
    tokens, offsets = pages()
    query = np.random.default_rng(2).standard_normal((5, DIM)).astype(np.float32)
    exact = maxsim_scores(query, TokenStore.from_float(tokens, offsets, "float32"), np.arange(37))
    quant = maxsim_scores(query, TokenStore.from_float(tokens, offsets, "int8"), np.arange(37))
    assert np.max(np.abs(exact - quant)) < 0.02 * np.max(np.abs(exact))


def test_all_negative_similarities_are_not_clipped_at_zero():
    """Zero-padded batching would score every query token max(0, ...) here."""
    rng = np.random.default_rng(3)
    query = np.abs(rng.standard_normal((4, DIM))).astype(np.float32)
    short = -np.abs(rng.standard_normal((2, DIM))).astype(np.float32)   # padded to 9 rows below
    long = -np.abs(rng.standard_normal((9, DIM))).astype(np.float32)
    store = TokenStore.from_float(*flatten_sets([short, long]), storage="float32")
    got = maxsim_scores(query, store, [0, 1])
    want = [oracle(query, store, 0), oracle(query, store, 1)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(got < 0)
    padded = np.vstack([short, np.zeros((7, DIM), np.float32)])
    assert (query @ padded.T).max(axis=1).sum() == 0.0 != got[0]  # what padding would give


def test_exhaustive_search_matches_the_oracle_ranking(store, monkeypatch):
    monkeypatch.setattr(maxsim, "_BLOCK_CELLS", 300)
    rng = np.random.default_rng(4)
    lengths = [3, 1, 8]
    queries = rng.standard_normal((sum(lengths), DIM)).astype(np.float32)
    qoff = np.r_[0, np.cumsum(lengths)]
    D, I = exhaustive_search(queries, qoff, store, k=5)
    for i in range(3):
        q = queries[qoff[i]:qoff[i + 1]]
        truth = np.array([oracle(q, store, p) for p in range(store.n_sets)])
        np.testing.assert_allclose(D[i], np.sort(truth)[::-1][:5], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(truth[I[i]], D[i], rtol=1e-5, atol=1e-4)  # ids carry those scores
    D, I = exhaustive_search(queries, qoff, store, k=store.n_sets + 4)  # k > pages: -1 padding
    assert np.all(I[:, -4:] == -1) and np.all(np.isinf(D[:, -4:]))
    assert sorted(I[0, :-4]) == list(range(store.n_sets))


def test_rerank_keeps_the_best_candidates_and_skips_missing(store):
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((6, DIM)).astype(np.float32)
    qoff = np.array([0, 2, 6])
    candidates = np.array([[5, 9, -1, 2, 30, 11], [-1, -1, -1, -1, -1, 4]])
    D, I = rerank(queries, qoff, store, candidates, k=3)
    for i in range(2):
        q = queries[qoff[i]:qoff[i + 1]]
        valid = [c for c in candidates[i] if c >= 0]
        best = sorted(valid, key=lambda c: -oracle(q, store, c))[:3]
        assert [c for c in I[i] if c >= 0] == best
    assert list(I[1]) == [4, -1, -1]
    # every page as a candidate: the same answer as brute force
    everything = np.tile(np.arange(store.n_sets), (2, 1))
    np.testing.assert_array_equal(rerank(queries, qoff, store, everything, 5)[1],
                                  exhaustive_search(queries, qoff, store, 5)[1])


def test_rejects_bad_input(store):
    query = np.ones((2, DIM), np.float32)
    with pytest.raises(ValueError, match="candidate ids"):
        maxsim_scores(query, store, [0, store.n_sets])
    with pytest.raises(ValueError, match="query tokens"):
        maxsim_scores(np.ones((2, DIM + 1), np.float32), store, [0])
    with pytest.raises(ValueError, match="at least one vector"):
        TokenStore(np.ones((3, DIM), np.float16), np.array([0, 0, 3]))
    with pytest.raises(ValueError, match="scales"):
        TokenStore(np.ones((3, DIM), np.int8), np.array([0, 3]))
    with pytest.raises(ValueError, match="storage"):
        TokenStore.from_float(np.ones((3, DIM)), np.array([0, 3]), "bfloat16")


def test_many_threads_leave_the_blas_thread_limit_as_they_found_it():
    """The one-BLAS-thread limit is process-wide; callers from many threads (a server) must not
    restore each other's state. Planted: without the counter, overlapping enter/exit leaves 1."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    store = TokenStore.from_float(*pages(seed=3, n=200), storage="float16")
    query = np.random.default_rng(1).standard_normal((8, DIM)).astype(np.float32)
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: maxsim_scores(query, store, np.arange(200)), range(64)))
    assert all(np.array_equal(r, results[0]) for r in results)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    # a batch of queries scored side by side equals one at a time
    queries = np.random.default_rng(2).standard_normal((40, DIM)).astype(np.float32)
    qoff = np.arange(0, 41, 4)
    cand = np.tile(np.arange(200), (10, 1))
    D, I = rerank(queries, qoff, store, cand, 7)
    for i in range(10):
        want = maxsim_scores(queries[qoff[i]:qoff[i + 1]], store, np.arange(200))
        np.testing.assert_array_equal(I[i], np.argsort(-want, kind="stable")[:7])
