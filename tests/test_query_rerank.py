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


def hub_data():
    """A corpus and a query bank in which row 7 is the nearest neighbour of many bank queries."""
    x = clustered(61, d=8, seed=31, centers=4)
    bank = clustered(40, d=8, seed=32, centers=4)
    hub = bank.mean(0)
    x[7] = hub / np.linalg.norm(hub)
    return x, bank


@pytest.fixture(scope="module")
def hub_index(tmp_path_factory):
    x, bank = hub_data()
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


# --- hubness across snapshots: the hub set belongs to the candidates' snapshot -----------------

class Spy:
    """A chain stage that only records the rerank context it is given."""

    name = "spy"

    def __init__(self):
        self.contexts = []

    def candidates(self, k):
        return k

    def rerank(self, ctx, D, I):
        self.contexts.append(ctx)
        return D, I


class HookedEncoder(VectorEncoder):
    """Runs `hook` once, inside the next encode: after that search has taken its snapshot
    and before it reranks, where a concurrent add or delete lands."""

    hook = None

    def encode(self, inputs, **kwargs):
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return super().encode(inputs, **kwargs)


def brute_force_dis(x, bank, xq, live, depth=20, k=5, beta=20.0):
    """DIS hubness by hand on the snapshot whose live rows are `live` (a mask over the rows
    of x): the activation set (each bank query's nearest live row) and, per query, the
    rows and scores of the formula of `expected_hubness`."""
    rows = np.flatnonzero(live)
    local_hubs = np.unique(np.argmax(bank @ x[rows].T, axis=1))
    per_query = [expected_hubness(x[rows], bank, xq, q, depth, k, beta, local_hubs) for q in range(len(xq))]
    return rows[local_hubs], [(rows[r], s) for r, s in per_query]


def assert_hubness_is(results, hubs_used, expected):
    hubs, per_query = expected
    np.testing.assert_array_equal(np.sort(hubs_used), hubs)
    for q, (hits, (rows, scores)) in enumerate(zip(results, per_query)):
        assert [h.row for h in hits] == rows.tolist(), q
        np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-4, atol=1e-3, err_msg=str(q))


def near(v, seed, noise=0.05):
    v = v + noise * np.random.default_rng(seed).normal(size=v.shape)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def append_shard(path, manifest, x_new, start):
    """Commit rows start.. of x_new as a new shard, by a new manifest (as the indexer's add does)."""
    rows = np.arange(start, start + len(x_new), dtype=np.int64)
    shard = fmt.new_shard_index(path, manifest)
    shard.add_with_ids(x_new, rows)
    meta = fmt.build_meta_table([f"item-{r}" for r in rows], ["text"] * len(rows),
                                [f"caption {r}" for r in rows], [None] * len(rows))
    info = fmt.write_shard(path, fmt.shard_name(len(manifest.shards)), shard, rows, meta, x_new)
    fmt.write_manifest(path, manifest.with_shard(info))


def test_hubness_follows_an_add_between_searches(tmp_path):
    x, bank = hub_data()
    # new rows next to six bank queries: each becomes its query's nearest neighbour
    X = np.vstack([x, near(bank[:6], 34), clustered(9, d=8, seed=35, centers=4)])
    old, new = np.arange(len(X)) < len(x), np.ones(len(X), dtype=bool)
    hubs_old, hubs_new = brute_force_dis(X, bank, X[:1], old)[0], brute_force_dis(X, bank, X[:1], new)[0]
    lost = np.setdiff1d(hubs_old, hubs_new)  # hubs of the old snapshot only
    xq = clustered(6, d=8, seed=33, centers=4)
    xq[0] = 0.55 * x[7] + 0.45 * x[30]
    xq[1:3] = near(X[[lost[0], len(x)]], 36)  # nearest: a lost hub; a new row
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    assert len(lost) and np.argmax(x @ xq[1]) == lost[0] and np.argmax(X @ xq[2]) == len(x)
    path = tmp_path / "index"
    manifest = build_index(path, x, "Flat", shards=2, model=D8)
    np.save(path / "query_bank.npy", bank)
    queries, encoder = [f"q{i}" for i in range(len(xq))], HookedEncoder(xq)
    first, hub, spy = Hubness(method="dis"), Hubness(method="dis"), Spy()
    with open_index(path, encoder=encoder) as index:
        before = index.search(queries, k=5, rerank=[first, spy])
        # `hub` has no hub set cached yet: it computes one inside the search the add overtakes
        encoder.hook = lambda: append_shard(path, manifest, X[len(x):], len(x))
        during = index.search(queries, k=5, rerank=[hub, spy])
        after = index.search(queries, k=5, rerank=[hub, spy])
        hubs = [first.hubs(spy.contexts[0])] + [hub.hubs(ctx) for ctx in spy.contexts[1:]]
        assert len(index) == len(X)
    expected_old, expected_new = brute_force_dis(X, bank, xq, old), brute_force_dis(X, bank, xq, new)
    assert_hubness_is(before, hubs[0], expected_old)
    assert_hubness_is(during, hubs[1], expected_old)  # the snapshot it started on, hub set included
    assert_hubness_is(after, hubs[2], expected_new)   # after the add: the new snapshot's hubs and scores
    assert spy.contexts[0].view is spy.contexts[1].view is not spy.contexts[2].view
    assert after[2][0].row == len(x) and not np.array_equal(expected_old[0], expected_new[0])


def test_hubness_follows_a_delete_between_searches(tmp_path):
    from mmsearch.indexer.maintenance import delete_ids

    x, bank = hub_data()
    alive = np.arange(len(x)) != 54  # delete a hub: some of its bank queries find rows that were no hubs
    hubs_old, hubs_new = (brute_force_dis(x, bank, x[:1], live)[0] for live in (np.ones(len(x), bool), alive))
    gained = np.setdiff1d(hubs_new, hubs_old)
    xq = clustered(6, d=8, seed=33, centers=4)
    xq[1] = near(x[gained[0]], 37)
    assert len(gained) and np.argmax(x @ xq[1]) == gained[0]
    path = tmp_path / "index"
    build_index(path, x, "Flat", shards=2, model=D8)
    np.save(path / "query_bank.npy", bank)
    queries, hub, spy = [f"q{i}" for i in range(len(xq))], Hubness(method="dis"), Spy()
    with open_index(path, encoder=VectorEncoder(xq)) as index:
        before = index.search(queries, k=5, rerank=[hub, spy])
        delete_ids(path, ["item-54"])  # the same manifest: only the snapshot's live rows change
        after = index.search(queries, k=5, rerank=[hub, spy])
        hubs = [hub.hubs(ctx) for ctx in spy.contexts]
    assert_hubness_is(before, hubs[0], brute_force_dis(x, bank, xq, np.ones(len(x), bool)))
    assert_hubness_is(after, hubs[1], brute_force_dis(x, bank, xq, alive))


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
        prompt = judge.prompt(enc.backbone, query, Candidate(h.text, image), format=judge.format_for(enc))
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
    with pytest.raises(InputError, match=r"format='qwen3'.*\['auto', 'yesno', 'qwen3_reranker'\]"):
        VLMReranker(format="qwen3")
    with pytest.raises(InputError, match="qwen3_reranker.*Qwen-family judge.*llava_next"):
        VLMReranker(tiny_encoder("llava_next"), format="qwen3_reranker")
    judge = VLMReranker(tiny_encoder("qwen2_vl"), format="qwen3_reranker")
    with pytest.raises(InputError, match=r"tokens \['yes', 'no'\].*has no \['yes', 'no'\]"):
        judge.score_pairs([Query(text="a red bus")], [Candidate("a bus")])  # the tiny vocabulary has neither
    with pytest.raises(InputError, match="'auto' depends on the judge"):
        VLMReranker().prompt("qwen2_vl", Query(text="a"), Candidate("b"))


# --- vlm, Qwen3-VL-Reranker format ----------------------------------------------------------
# The oracle follows the authors' reranker (QwenLM/Qwen3-VL-Embedding, src/models/
# qwen3_vl_reranker.py, Qwen3VLReranker: format_mm_instruction, format_mm_content, tokenize,
# get_binary_linear, compute_scores), one unpadded pair at a time through the full
# transformers model; it shares no code with mmsearch.query.vlm.

QWEN3_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                'Note that the answer can only be "yes" or "no".')
QWEN3_DEFAULT = "Given a search query, retrieve relevant candidates that answer the query."
SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
WRONG_RULES = ("no newline before <Document>", "newline after the instruction", "text before image",
               "<think> block after the generation prompt", "capitalised Yes/No", "the processor's image sizing")


def _needs_qwen3_vl(kind):
    from mmsearch import testing
    from mmsearch.encoders import SUPPORTED

    if kind == "qwen3_vl" and "qwen3_vl" not in testing.KINDS:
        pytest.skip("mmsearch.testing.build_tiny_model cannot build 'qwen3_vl' yet (a helper is adding it)")
    if kind == "qwen3_vl" and "qwen3_vl" not in SUPPORTED:
        pytest.skip("load_encoder does not load 'qwen3_vl' yet (the encoders rewrite adds it)")


@pytest.fixture(scope="module")
def reranker_judge(tmp_path_factory, tiny_dir):
    """A factory: kind -> (checkpoint dir, judge encoder, full transformers model), built once.

    A copy of the tiny checkpoint whose tokenizer has the vocabulary entries "yes" and "no"
    (with their own embedding and LM head rows) and whose attention is sharpened (query/key
    scaled x6; Qwen3's q/k norms instead), so a wrong prompt moves the score measurably.
    The Qwen3-VL copy is named like a reranker checkpoint, for format="auto"."""
    import shutil

    import transformers
    import mmsearch
    from mmsearch.testing import model_class

    cache = {}

    def get(kind):
        if kind in cache:
            return cache[kind]
        src = tiny_dir(kind)
        name = "Qwen3-VL-Reranker-tiny" if kind == "qwen3_vl" else f"{kind}-yes-no-judge"
        out = tmp_path_factory.mktemp("judge") / name
        shutil.copytree(src, out)
        tok = transformers.AutoTokenizer.from_pretrained(str(src))
        assert tok.add_tokens(["yes", "no"]) == 2
        tok.save_pretrained(str(out))
        model = model_class(kind).from_pretrained(str(src)).eval()
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tok))
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
                new = layer.weight[old:]
                new.copy_(torch.randn(new.shape, generator=gen) * layer.weight[:old].std())
            for module in model.modules():
                if hasattr(module, "q_norm") and hasattr(module, "k_norm"):
                    module.q_norm.weight.mul_(6.0), module.k_norm.weight.mul_(6.0)
                elif hasattr(module, "q_proj") and hasattr(module, "k_proj"):  # the text model's attention
                    for proj in (module.q_proj, module.k_proj):
                        proj.weight.mul_(6.0)
                        if proj.bias is not None:
                            proj.bias.mul_(6.0)
        model.save_pretrained(str(out))
        full = model_class(kind).from_pretrained(str(out)).eval()
        cache[kind] = (out, mmsearch.load_encoder(out, device="cpu"), full)
        return cache[kind]

    return get


def authors_size(image, factor):
    """qwen_vl_utils fetch_image with the reranker's min/max pixels (4 and 1800 merged tokens)."""
    import math

    w, h = image.size
    lo, hi = 4 * factor * factor, 1800 * factor * factor
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > hi:
        beta = math.sqrt(h * w / hi)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < lo:
        beta = math.sqrt(lo / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return image.convert("RGB").resize((wb, hb))


def oracle_score(judge, full, query, doc_text, doc_image, rule="authors"):
    """sigmoid(logit_yes - logit_no) of the full model on one hand-built, unpadded prompt."""
    def part(prefix, text, image):
        if text is None and image is None:
            return prefix + "NULL"
        slot, words = (SLOT if image is not None else ""), (text or "")
        return prefix + (words + slot if rule == "text before image" else slot + words)

    instruction = query.instruction or QWEN3_DEFAULT
    sep = "\n" if rule == "newline after the instruction" else ""
    doc_prefix = "<Document>:" if rule == "no newline before <Document>" else "\n<Document>:"
    prompt = ("<|im_start|>system\n" + QWEN3_SYSTEM + "<|im_end|>\n<|im_start|>user\n<Instruct>: " + instruction
              + sep + part("<Query>:", query.text, query.image) + part(doc_prefix, doc_text, doc_image)
              + "<|im_end|>\n<|im_start|>assistant\n")
    if rule == "<think> block after the generation prompt":
        prompt += "<think>\n\n</think>\n\n"
    proc = judge.processor.image_processor
    factor = proc.patch_size * proc.merge_size
    own = rule == "the processor's image sizing"  # the tiny processors' max (112 or 128 px squared) shrinks 200x150
    images = [im if own else authors_size(im, factor) for im in (query.image, doc_image) if im is not None]
    inputs = judge.processor(text=[prompt], images=images or None, return_tensors="pt",
                             **({"do_resize": False} if images and not own else {}))
    assert inputs["attention_mask"].all()
    with torch.inference_mode():
        logits = full(**inputs).logits[0, -1].double()
    tok = judge.processor.tokenizer
    if rule == "capitalised Yes/No":
        yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    else:
        yes, no = tok.get_vocab()["yes"], tok.get_vocab()["no"]
    return torch.sigmoid(logits[yes] - logits[no]).item()


def qwen3_queries(tmp_path):
    Image.new("RGB", (50, 50), (10, 10, 250)).save(tmp_path / "ref.png")
    return [Query(text="a red bus"),
            Query(text="make it red", image=load_image(tmp_path / "ref.png"), instruction="Find the edited image.")]


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen3_vl"])
def test_vlm_qwen3_reranker_matches_the_authors_rules(reranker_judge, kind, tmp_path):
    _needs_qwen3_vl(kind)
    _, judge, full = reranker_judge(kind)
    fmt = "auto" if kind == "qwen3_vl" else "qwen3_reranker"  # the Qwen3-VL copy is named "...Reranker..."
    reranker = VLMReranker(judge, format=fmt, batch_size=4)
    assert reranker.format_for(judge) == "qwen3_reranker"
    sizes = [(64, 48), (90, 61), (41, 130), (200, 150)]
    colors = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (9, 90, 9)]
    images = [Image.new("RGB", size, color) for size, color in zip(sizes, colors)]
    docs = [Candidate(TEXTS[0]), Candidate(TEXTS[1][:12]), Candidate(TEXTS[2], images[0]),
            Candidate(TEXTS[3], images[1]), Candidate(None, images[2]), Candidate(None, images[3]),
            Candidate(None, None)]  # text, image+text, image only, nothing ("NULL")
    queries = qwen3_queries(tmp_path)
    pairs = [(q, d) for q in queries for d in docs]
    # batches of 4 mix text-only, image-only and image+text pairs: left padding inside each batch
    got = reranker.score_pairs([q for q, _ in pairs], [d for _, d in pairs])
    expected = np.array([oracle_score(judge, full, q, d.text, d.image) for q, d in pairs])
    assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()
    one_by_one = VLMReranker(judge, format="qwen3_reranker", batch_size=1).score_pairs(
        [q for q, _ in pairs], [d for _, d in pairs])
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    some = slice(len(docs) + 2, len(docs) + 6)  # the composed query with the image-bearing documents
    for rule in WRONG_RULES:  # the oracle can fail: each planted wrong rule is far from the reranker
        wrong = np.array([oracle_score(judge, full, q, d.text, d.image, rule) for q, d in pairs[some]])
        assert np.abs(got[some] - wrong).max() > 1e-3, (rule, np.abs(got[some] - wrong).max())


def test_vlm_qwen3_reranker_reorders_search_hits(vlm_index, reranker_judge, tmp_path):
    path, enc = vlm_index
    _, judge, full = reranker_judge("qwen2_vl")
    rerank = [VLMReranker(judge, format="qwen3_reranker", batch_size=3, factor=2)]
    moved = 0
    with open_index(path, encoder=enc) as index:
        for query in qwen3_queries(tmp_path):
            pool = index.search(query, k=6)
            hits = index.search(query, k=3, rerank=rerank)
            yesno = index.search(query, k=3, rerank=[VLMReranker(judge, format="yesno", batch_size=3, factor=2)])
            expected = np.array([oracle_score(judge, full, query, h.text, load_image(h.image) if h.image else None)
                                 for h in pool])
            order = np.argsort(-expected, kind="stable")[:3]
            assert [h.id for h in hits] == [pool[i].id for i in order]
            np.testing.assert_allclose([h.score for h in hits], expected[order], atol=1e-5)
            assert set(hits[0].scores) == {"ann", "vlm"}
            moved += [h.id for h in hits] != [h.id for h in pool[:3]]
            moved += [h.id for h in hits] != [h.id for h in yesno]
    assert moved  # the format changes the ranking (against the ANN order or the yes/no format's)


def test_vlm_format_auto_reads_the_checkpoint_name():
    from types import SimpleNamespace

    def named(backbone, name):
        return SimpleNamespace(backbone=backbone, name=name, processor=None)

    reranker = VLMReranker()
    assert reranker.format_for(named("qwen3_vl", "Qwen/Qwen3-VL-Reranker-2B")) == "qwen3_reranker"
    assert reranker.format_for(named("qwen3_vl", "/models/qwen3-vl-reranker-8b")) == "qwen3_reranker"
    assert reranker.format_for(named("qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct")) == "yesno"
    assert reranker.format_for(named("qwen2_vl", "someone/Qwen2-VL-reranker")) == "yesno"
    assert VLMReranker(format="yesno").format_for(named("qwen3_vl", "Qwen/Qwen3-VL-Reranker-2B")) == "yesno"
    prompt = VLMReranker(format="qwen3_reranker").prompt(
        "qwen3_vl", Query(text="a red bus"), Candidate("a bus", Image.new("RGB", (8, 8))))
    assert prompt == ("<|im_start|>system\n" + QWEN3_SYSTEM + "<|im_end|>\n<|im_start|>user\n<Instruct>: "
                      + QWEN3_DEFAULT + "<Query>:a red bus\n<Document>:" + SLOT + "a bus<|im_end|>\n"
                      "<|im_start|>assistant\n")
