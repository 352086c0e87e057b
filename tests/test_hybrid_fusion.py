"""Fusion (issue #26) against an independent implementation: ranx's `fuse` (RRF, and min-max
normalisation with a weighted sum) on the same two runs gives the same scores and ranking.
Runs are seeded, of odd sizes, with overlapping and disjoint rows, missing entries and ties."""
import numpy as np
import pytest

from mmsearch.errors import InputError
from mmsearch.query.fusion import rrf, score_fusion
from mmsearch.query.hybrid import SearchMode

ranx = pytest.importorskip("ranx")
pytestmark = pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaTypeSafetyWarning")

N_QUERIES, DEPTH, K, POOL = 23, 17, 11, 41


def arm(rng, missing: int = 0):
    """A faiss-style result: distinct rows from a shared pool, scores descending, -1 at the tail."""
    I = np.stack([rng.choice(POOL, DEPTH, replace=False) for _ in range(N_QUERIES)]).astype(np.int64)
    D = -np.sort(-rng.normal(size=(N_QUERIES, DEPTH)).astype(np.float32), axis=1)
    if missing:
        I[:, -missing:], D[:, -missing:] = -1, -np.finfo(np.float32).max
    return D, I


def ranx_run(D, I):
    return ranx.Run.from_dict({f"q{q}": {f"d{int(r)}": float(d) for d, r in zip(D[q], I[q]) if r >= 0}
                               for q in range(len(I))})


def expected(fused, k):
    """ranx's fused scores, ranked by score then by the lower row (our tie rule)."""
    out = []
    for q in range(N_QUERIES):
        scores = fused[f"q{q}"]
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], int(kv[0][1:])))[:k]
        out.append(([s for _, s in ranked], [int(d[1:]) for d, _ in ranked]))
    return out


def assert_same(D, I, want):
    for q, (scores, rows) in enumerate(want):
        assert I[q, :len(rows)].tolist() == rows, f"query {q}"
        np.testing.assert_allclose(D[q, :len(rows)], scores, rtol=1e-6, atol=1e-9)
        assert (I[q, len(rows):] == -1).all()


@pytest.mark.parametrize("rrf_k", [60, 1, 0])
def test_rrf_matches_ranx(rrf_k):
    rng = np.random.default_rng(7)
    vec, lex = arm(rng), arm(rng, missing=5)
    D, I = rrf([vec, lex], K, rrf_k)
    fused = ranx.fuse([ranx_run(*vec), ranx_run(*lex)], norm=None, method="rrf", params={"k": rrf_k})
    assert_same(D, I, expected(fused, K))


@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.0, 1.0])
def test_score_fusion_matches_ranx_minmax_wsum(alpha):
    rng = np.random.default_rng(11)
    vec, lex = arm(rng), arm(rng, missing=3)
    D, I = score_fusion(vec, lex, K, alpha)
    fused = ranx.fuse([ranx_run(*vec), ranx_run(*lex)], norm="min-max", method="wsum",
                      params={"weights": [alpha, 1 - alpha]})
    assert_same(D, I, expected(fused, K))


def test_planted_unnormalised_sum_differs_from_ranx():
    """The check can fail: raw scores summed without min-max (a plausible slip) disagree."""
    rng = np.random.default_rng(11)
    vec, lex = arm(rng), arm(rng, missing=3)
    lex = (np.where(lex[1] >= 0, lex[0] * 10 + 50, lex[0]), lex[1])  # BM25-like magnitudes
    fused = ranx.fuse([ranx_run(*vec), ranx_run(*lex)], norm="min-max", method="wsum", params={"weights": [.5, .5]})
    from mmsearch.query.fusion import fuse

    valid = [np.where(a[1] >= 0, a[0], 0.0) for a in (vec, lex)]
    D, I = fuse([vec, lex], [0.5, 0.5], K, valid)
    with pytest.raises(AssertionError):
        assert_same(D, I, expected(fused, K))


def test_one_empty_arm_keeps_the_other_arms_order():
    rng = np.random.default_rng(3)
    vec = arm(rng)
    empty = (np.full((N_QUERIES, DEPTH), -np.finfo(np.float32).max, np.float32), np.full((N_QUERIES, DEPTH), -1))
    for D, I in (rrf([vec, empty], K), score_fusion(vec, empty, K)):
        assert (I == vec[1][:, :K]).all()


@pytest.mark.parametrize("bad", [{"mode": "bm25"}, {"mode": "hybrid", "fusion": "max"},
                                 {"mode": "hybrid", "alpha": 1.5}, {"mode": "hybrid", "rrf_k": -1}])
def test_bad_settings_name_the_input(bad):
    name = next(iter(set(bad) - {"mode"}), "mode")
    with pytest.raises(InputError, match=name):
        SearchMode(**bad)


def test_alpha_alone_means_score_fusion():
    assert SearchMode("hybrid").fusion == "rrf"
    assert SearchMode("hybrid", alpha=0.3).fusion == "score"
