"""MUVERA encodings: bit for bit against fastembed's own code (run in its own virtualenv,
MMSEARCH_FASTEMBED_PYTHON) and against a plain per-document loop written from the paper's
rules; planted wrong draw orders and fill rules fail those comparisons; FDE inner products
rank pages like Chamfer (MaxSim) similarity."""
import os
import subprocess
import textwrap

import numpy as np
import pytest

from mmsearch.multivector import Muvera, TokenStore, flatten_sets, maxsim_scores
from mmsearch.multivector import muvera
from mmsearch.multivector.synthetic import PageModel

FASTEMBED_PYTHON = os.environ.get("MMSEARCH_FASTEMBED_PYTHON")
needs_fastembed = pytest.mark.skipif(
    not FASTEMBED_PYTHON,
    reason="set MMSEARCH_FASTEMBED_PYTHON to a python with fastembed installed (fastembed pins "
           "huggingface-hub<2, so it lives in its own venv; .ci/run makes one)")

# (dim, k_sim, dim_proj, r_reps, seed): fastembed's defaults, and no projection (dim_proj == dim)
PARAMS = [(128, 5, 16, 20, 42), (24, 3, 24, 3, 7)]


def token_sets(dim, seed=0, lengths=(1, 2, 3, 7, 31, 64, 300, 1000, 5)):
    """Odd sizes: 1-3 tokens leave most clusters empty (fill and tie rules), 1000 fill them."""
    rng = np.random.default_rng(seed)
    return flatten_sets([rng.standard_normal((n, dim)).astype(np.float32) for n in lengths])


def loop_fde(vectors, m: Muvera, document: bool):
    """The rules one document at a time, token by token: a second implementation."""
    out = []
    B = m.n_clusters
    hamming = np.array([[bin(a ^ b).count("1") for b in range(B)] for a in range(B)])
    for r in range(m.r_reps):
        ids = (vectors @ m.hyperplanes[r] > 0) @ (1 << np.arange(m.k_sim))
        centers, members = np.zeros((B, m.dim)), [[] for _ in range(B)]
        for i, (c, v) in enumerate(zip(ids, vectors)):
            centers[c] += v
            members[c].append(i)
        if document:
            for c in range(B):
                if members[c]:
                    centers[c] /= len(members[c])
            for c in range(B):
                if not members[c]:
                    near = min((hamming[c, o], o) for o in range(B) if members[o])[1]
                    centers[c] = vectors[members[near][0]]
        if m.dim_proj < m.dim:
            centers = (1 / np.sqrt(m.dim_proj)) * (centers @ m.projections[r])
        out.append(centers.ravel())
    return np.concatenate(out)


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


FASTEMBED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from fastembed.postprocess.muvera import Muvera
    z = np.load(sys.argv[1])
    m = Muvera(*[int(v) for v in z["params"][:4]], random_seed=int(z["params"][4]))
    tok, off = z["tokens"], z["offsets"]
    sets = [tok[a:b] for a, b in zip(off[:-1], off[1:])]
    np.savez(sys.argv[2], documents=np.stack([m.process_document(s) for s in sets]),
             queries=np.stack([m.process_query(s) for s in sets]))
""")


@pytest.fixture(scope="module")
def fastembed_fdes(tmp_path_factory):
    """params -> (tokens, offsets, fastembed's document FDEs, fastembed's query FDEs)."""
    folder = tmp_path_factory.mktemp("fastembed")
    script = folder / "ref.py"
    script.write_text(FASTEMBED_SCRIPT)
    out = {}
    for i, params in enumerate(PARAMS):
        tokens, offsets = token_sets(params[0], seed=i)
        np.savez(folder / f"in{i}.npz", tokens=tokens, offsets=offsets, params=np.array(params))
        subprocess.run([FASTEMBED_PYTHON, str(script), str(folder / f"in{i}.npz"), str(folder / f"out{i}.npz")],
                       check=True, capture_output=True, timeout=300)
        ref = np.load(folder / f"out{i}.npz")
        out[params] = tokens, offsets, ref["documents"], ref["queries"]
    return out


def swapped_draws(rng, dim, k_sim, dim_proj, r_reps):
    """Planted: the projections drawn before the hyperplanes."""
    projections = rng.choice([-1, 1], size=(r_reps, dim, dim_proj))
    return np.stack([rng.normal(size=(dim, k_sim)) for _ in range(r_reps)]), projections


def ties_to_higher_id(empty, hamming):
    """Planted: among equally near occupied clusters, the higher id."""
    masked = np.where(empty[:, None, :], hamming.max() + 1, hamming[None])
    return masked.shape[2] - 1 - np.argmin(masked[:, :, ::-1], axis=2)


@needs_fastembed
@pytest.mark.parametrize("params", PARAMS)
def test_bit_for_bit_with_fastembed(fastembed_fdes, params):
    tokens, offsets, ref_docs, ref_queries = fastembed_fdes[params]
    m = Muvera(*params)
    docs = m.encode_documents(tokens, offsets, dtype=np.float64)
    assert docs.shape == ref_docs.shape == (len(offsets) - 1, params[3] * 2 ** params[1] * min(params[2], params[0]))
    np.testing.assert_array_equal(bits(docs), bits(ref_docs))
    np.testing.assert_array_equal(bits(m.encode_queries(tokens, offsets, dtype=np.float64)), bits(ref_queries))
    np.testing.assert_array_equal(m.encode_documents(tokens, offsets), ref_docs.astype(np.float32))


@needs_fastembed
@pytest.mark.parametrize("planted", ["draw_parameters", "nearest_occupied"])
def test_fastembed_comparison_catches_a_planted_rule(fastembed_fdes, monkeypatch, planted):
    tokens, offsets, ref_docs, _ = fastembed_fdes[PARAMS[0]]
    wrong = {"draw_parameters": swapped_draws, "nearest_occupied": ties_to_higher_id}[planted]
    monkeypatch.setattr(muvera, planted, wrong)
    docs = Muvera(*PARAMS[0]).encode_documents(tokens, offsets, dtype=np.float64)
    assert not np.array_equal(bits(docs), bits(ref_docs))


@pytest.mark.parametrize("params", PARAMS)
def test_matches_the_per_document_loop_bit_for_bit(params):
    m = Muvera(*params)
    tokens, offsets = token_sets(params[0], seed=3)
    docs = m.encode_documents(tokens, offsets, dtype=np.float64)
    queries = m.encode_queries(tokens, offsets, dtype=np.float64)
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        np.testing.assert_array_equal(bits(docs[i]), bits(loop_fde(tokens[a:b], m, document=True)))
        np.testing.assert_array_equal(bits(queries[i]), bits(loop_fde(tokens[a:b], m, document=False)))


@pytest.mark.parametrize("planted", ["draw_parameters", "nearest_occupied"])
def test_loop_comparison_catches_a_planted_rule(monkeypatch, planted):
    tokens, offsets = token_sets(128, seed=3, lengths=(2, 3))  # few tokens: empty clusters, ties
    reference = Muvera(*PARAMS[0])
    wrong = {"draw_parameters": swapped_draws, "nearest_occupied": ties_to_higher_id}[planted]
    monkeypatch.setattr(muvera, planted, wrong)
    docs = Muvera(*PARAMS[0]).encode_documents(tokens, offsets, dtype=np.float64)
    assert not np.array_equal(bits(docs[0]), bits(loop_fde(tokens[:2], reference, document=True)))


def test_batches_do_not_change_the_bits(monkeypatch):
    tokens, offsets = token_sets(128, seed=5)
    m = Muvera(128)
    whole = m.encode_documents(tokens, offsets, dtype=np.float64)
    monkeypatch.setattr(muvera, "_BATCH_TOKENS", 40)  # many batches, and sets longer than one
    np.testing.assert_array_equal(bits(m.encode_documents(tokens, offsets, dtype=np.float64)), bits(whole))
    np.testing.assert_array_equal(bits(m.encode_document(tokens[offsets[4]:offsets[5]], np.float64)), bits(whole[4]))


def spearman(a, b):
    rank = lambda x: np.argsort(np.argsort(x)).astype(np.float64)  # noqa: E731 (no ties here)
    return np.corrcoef(rank(a), rank(b))[0, 1]


def test_fde_inner_products_rank_like_chamfer():
    """On structured random pages: Spearman between <FDE(q), FDE(d)> and MaxSim(q, d)."""
    pm = PageModel(dim=64, vocabulary=256, concepts_per_page=12, seed=1)
    lengths = np.random.default_rng(1).integers(40, 120, 300)
    offsets = np.r_[0, np.cumsum(lengths)]
    store = TokenStore.from_float(pm.pages(0, lengths), offsets, "float32")
    m = Muvera(64)
    docs = m.encode_documents(store.tokens, offsets)
    queries = pm.queries(np.arange(0, 300, 30), 16, seed=2).reshape(10, 16, 64)
    rhos = [spearman(docs @ m.encode_query(q), maxsim_scores(q, store, np.arange(300))) for q in queries]
    # shuffled pages: the same test on unrelated scores stays near 0, so it can fail
    shuffled = [spearman(docs[np.random.default_rng(i).permutation(300)] @ m.encode_query(q),
                         maxsim_scores(q, store, np.arange(300))) for i, q in enumerate(queries)]
    print(f"Spearman(FDE inner product, MaxSim): mean {np.mean(rhos):.3f}, min {np.min(rhos):.3f}; "
          f"shuffled {np.mean(shuffled):.3f}")
    assert np.mean(rhos) > 0.5 and np.min(rhos) > 0.4  # measured: mean 0.60, min 0.54
    assert abs(np.mean(shuffled)) < 0.2


def test_rejects_bad_input():
    m = Muvera(16, dim_proj=8)
    with pytest.raises(ValueError, match="dim_proj"):
        Muvera(8, dim_proj=16)
    with pytest.raises(ValueError, match="dim 16"):
        m.encode_document(np.ones((3, 8), np.float32))
    with pytest.raises(ValueError, match="at least one vector"):
        m.encode_documents(np.ones((3, 16), np.float32), np.array([0, 3, 3]))
