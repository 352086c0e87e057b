"""Each reranker against a hand-computed expectation; chains; the VLM judge on a tiny model."""
import numpy as np
import pytest
import torch
from PIL import Image

from mmsearch import index_format as fmt
from mmsearch.errors import InputError
from mmsearch.images import load_image
from mmsearch.query import Hubness, Refine, VLMReranker, open_index
from mmsearch.query.vlm import Candidate
from mmsearch.types import Query
from test_query_support import (VectorEncoder, assert_same_knn, brute_force, build_index, clustered,
                                model_info)


def arrays(hits_per_query):
    """Hits back to the faiss pair (D, I)."""
    D = np.array([[h.score for h in hits] for hits in hits_per_query], dtype=np.float32)
    I = np.array([[h.row for h in hits] for hits in hits_per_query], dtype=np.int64)
    return D, I


def fp16(x):
    return x.astype(np.float16).astype(np.float32)  # what vectors.npy stores


# --- refine -----------------------------------------------------------------------------

def test_refine_recovers_exact_order_on_pq(tmp_path):
    x, xq = clustered(997, seed=21), clustered(9, seed=22)
    build_index(tmp_path / "pq", x, "IVF16,PQ8x4", shards=3, search_params={"nprobe": 16})
    queries = [f"q{i}" for i in range(len(xq))]
    with open_index(tmp_path / "pq", encoder=VectorEncoder(xq)) as index:
        plain = arrays(index.search(queries, k=10))
        everything = arrays(index.search(queries, k=10, rerank=Refine(depth=997)))
        pool = index.search(queries, k=40)  # what the default refine (factor 4) rescores
        refined = index.search(queries, k=10, rerank="refine")
    exact = brute_force(fp16(x), xq, 10)
    assert not np.allclose(plain[0], exact[0], atol=1e-3)  # PQ scores are approximate...
    assert_same_knn(*everything, *exact, fp16(x), xq, atol=1e-5)  # ...refine over all is exact
    for q, (hits, candidates) in enumerate(zip(refined, pool)):
        rows = np.array([h.row for h in candidates])
        scores = fp16(x)[rows] @ xq[q]
        order = np.argsort(-scores, kind="stable")[:10]
        assert [h.row for h in hits] == rows[order].tolist()
        np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-5)
        assert set(hits[0].scores) == {"ann", "refine"} and hits[0].scores["refine"] == hits[0].score


def test_refine_without_stored_vectors_explains(tmp_path):
    x = clustered(300, seed=23)
    build_index(tmp_path / "nv", x, "IVF8,PQ8x4", vectors=False)
    with open_index(tmp_path / "nv", encoder=VectorEncoder(x[:2])) as index:
        with pytest.raises(fmt.IndexFormatError, match="no vectors.npy"):
            index.search("q0", k=3, rerank="refine")


# --- hubness ------------------------------------------------------------------------------

D8 = fmt.ModelInfo(id="test/vectors", backbone="qwen2_vl", dim=8, dtype="float32")


@pytest.fixture(scope="module")
def hub_index(tmp_path_factory):
    x = clustered(61, d=8, seed=31, centers=4)
    bank = clustered(40, d=8, seed=32, centers=4)
    hub = bank.mean(0)
    x[7] = hub / np.linalg.norm(hub)  # the nearest neighbour of many bank queries
    xq = clustered(6, d=8, seed=33, centers=4)
    xq[0] = 0.55 * x[7] + 0.45 * x[30]  # nearest: the hub, then item 30
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    path = tmp_path_factory.mktemp("hub") / "index"
    build_index(path, x, "Flat", shards=2, model=D8)
    np.save(path / "query_bank.npy", bank)
    return path, x, bank, xq


def expected_hubness(x, bank, xq, q, depth, k, beta, hubs=None):
    """The formula, by hand: beta*s - log sum_b exp(beta*<b, c>) over the top-depth candidates."""
    v = fp16(x).astype(np.float64)
    cand = np.argsort(-(x @ xq[q]), kind="stable")[:depth]
    sims = v[cand] @ xq[q].astype(np.float64)
    log_z = np.log(np.exp(beta * bank.astype(np.float64) @ v[cand].T).sum(0))
    scores = beta * sims - log_z
    if hubs is not None and cand[0] not in hubs:
        scores = sims
    order = np.argsort(-scores, kind="stable")[:k]
    return cand[order], scores[order]


@pytest.mark.parametrize("method", ["is", "dis"])
def test_hubness_matches_the_formula(hub_index, method):
    path, x, bank, xq = hub_index
    hubs = np.unique(np.argmax(bank @ x.T, axis=1)) if method == "dis" else None
    assert 7 in np.argmax(bank @ x.T, axis=1)
    with open_index(path, encoder=VectorEncoder(xq)) as index:
        results = index.search([f"q{i}" for i in range(len(xq))], k=5, rerank=Hubness(method=method, beta=20))
    applied = 0
    for q, hits in enumerate(results):
        rows, scores = expected_hubness(x, bank, xq, q, 20, 5, 20.0, hubs)
        assert [h.row for h in hits] == rows.tolist(), (method, q)
        np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-4, atol=1e-3)
        applied += hubs is None or rows.size and np.argmax(x @ xq[q]) in hubs
    assert np.argmax(x @ xq[0]) == 7 and results[0][0].row == 30  # the hub loses its top spot
    if method == "dis":
        assert 0 < applied < len(xq)  # some queries normalised, some left alone


def test_hubness_bank_argument_and_missing_bank(hub_index, tmp_path):
    path, x, bank, xq = hub_index
    with open_index(path, encoder=VectorEncoder(xq)) as index:
        from_file = index.search("q1", k=5, rerank="hubness")
        given = index.search("q1", k=5, rerank=Hubness(bank=bank))
        chained = index.search("q1", k=5, rerank="refine,hubness")
    assert [h.row for h in from_file] == [h.row for h in given] == [h.row for h in chained]
    assert set(chained[0].scores) == {"ann", "refine", "hubness"}
    build_index(tmp_path / "nobank", x, "Flat", model=D8)
    with open_index(tmp_path / "nobank", encoder=VectorEncoder(xq)) as index:
        with pytest.raises(InputError, match="query_bank.npy"):
            index.search("q0", k=3, rerank="hubness")
        with pytest.raises(InputError, match=r"\(n, 8\)"):
            index.search("q0", k=3, rerank=Hubness(bank=np.ones((3, 4))))
        with pytest.raises(InputError, match=r"unknown reranker 'rerankz'; valid: \['refine'"):
            index.search("q0", k=3, rerank="refine,rerankz")
    with pytest.raises(InputError, match="method"):
        Hubness(method="softmax")


# --- vlm ----------------------------------------------------------------------------------

TEXTS = ["a red bus parked on a city street", "a small dog running on the grass in the park",
         "two cats sleeping on a blue sofa", "a white boat sailing on the calm sea",
         "a plate of pasta with tomato sauce and cheese", "children playing football on a sunny day"]


@pytest.fixture(scope="module")
def vlm_index(tmp_path_factory, tiny_encoder):
    enc = tiny_encoder("qwen2_vl")
    root = tmp_path_factory.mktemp("vlm")
    colors = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (240, 240, 240), (200, 120, 30), (20, 20, 20)]
    images = []
    for i, c in enumerate(colors):
        images.append(str(root / f"{i}.png"))
        Image.new("RGB", (64, 48 + 8 * i), c).save(images[-1])
    texts = TEXTS + [None] * 3
    imgs = [None] * 3 + images[:3] + images[3:]
    from mmsearch.types import Item
    items = [Item(id=f"item-{i}", text=t, image=im) for i, (t, im) in enumerate(zip(texts, imgs))]
    x = enc.encode(items, instruction="Represent the given image.")
    build_index(root / "index", x, "Flat", shards=2, model=model_info(enc), texts=texts, images=imgs)
    return root / "index", enc


def p_yes(enc, prompt, images):
    """Reference: the full model's next-token logits on one unpadded prompt."""
    tok = enc.processor.tokenizer
    inputs = enc.processor(text=[prompt], images=images or None, return_tensors="pt")
    with torch.inference_mode():
        logits = enc.model(**inputs).logits[0, -1]
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    return torch.softmax(logits[[yes, no]].float(), -1)[0].item()


@pytest.mark.parametrize("query", [Query(text="a red bus"),
                                   Query(text="make it red", instruction="Find the edited image.")],
                         ids=["text", "composed"])
def test_vlm_scores_pairs_like_the_full_model(vlm_index, query, tmp_path):
    path, enc = vlm_index
    if query.instruction:  # composed: an image plus a modification text
        Image.new("RGB", (50, 50), (10, 10, 250)).save(tmp_path / "ref.png")
        query = Query(text=query.text, image=str(tmp_path / "ref.png"), instruction=query.instruction)
    judge = VLMReranker(batch_size=3, factor=2)
    with open_index(path, encoder=enc) as index:
        pool = index.search(query, k=6)
        hits = index.search(query, k=3, rerank=judge)
    qimg = [load_image(query.image)] if query.image else []
    expected = []
    for h in pool:
        image = load_image(h.image) if h.image else None
        prompt = judge.prompt(enc.backbone, query, Candidate(h.text, image))
        expected.append(p_yes(enc, prompt, qimg + ([image] if image else [])))
    order = np.argsort(-np.array(expected), kind="stable")[:3]
    assert [h.id for h in hits] == [pool[i].id for i in order]
    np.testing.assert_allclose([h.score for h in hits], np.array(expected)[order], atol=1e-4)
    assert set(hits[0].scores) == {"ann", "vlm"}


def test_vlm_needs_a_vision_language_judge(tmp_path, tiny_encoder):
    with pytest.raises(InputError, match="vision-language model"):
        VLMReranker(tiny_encoder("clip"))
    with pytest.raises(InputError, match="batch_size"):
        VLMReranker(batch_size=0)
