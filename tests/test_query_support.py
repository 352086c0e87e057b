"""Shared helpers of the query tests (imported by the other test_query_* modules):
indexes written straight through `mmsearch.index_format`, seeded data, and a
brute-force oracle with tie tolerance. The tests here check the helpers themselves."""
import faiss
import numpy as np

from mmsearch import index_format as fmt
from mmsearch.store import Store

COLORS = ("red", "green", "blue", "black", "white")
MODALITIES = ("text", "image", "image,text")
TEST_MODEL = fmt.ModelInfo(id="test/vectors", backbone="qwen2_vl", dim=64, dtype="float32")


def clustered(n, d=64, seed=0, centers=13, noise=0.35):
    """Seeded clustered unit vectors (ANN results are neither trivial nor flaky)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def item_meta(row):
    """Deterministic metadata of global row `row` (nulls included)."""
    return {"color": COLORS[row % 5], "year": 1990 + (row * 7) % 31, "price": round((row * 13) % 100 / 4, 2),
            "tag": None if row % 11 == 0 else f"t{row % 4}"}


def model_info(encoder):
    return fmt.ModelInfo(id=encoder.name, backbone=encoder.backbone, dim=encoder.dim, dtype="float32",
                         weight_hash=encoder.fingerprint, family=getattr(encoder, "family", None))


def split_sizes(n, shards):
    """Uneven shard sizes summing to n."""
    cuts = np.linspace(0, n, shards + 1).astype(int)
    cuts[1:-1] += np.arange(1, shards) % 3 - 1
    return np.diff(cuts).tolist()


def build_index(path, x, spec="Flat", shards=1, *, model=TEST_MODEL, texts=None, images=None, modalities=None,
                deleted=(), search_params=None, metric="inner_product", vectors=True, train=None, compact=None):
    """A committed index of `x` (row i = item f"item-{i}") in `shards` shards; returns the manifest.
    `compact`: a CompactSpec (then `spec` is its faiss factory, e.g. "BFlat")."""
    n, d = x.shape
    path.mkdir(parents=True, exist_ok=True)
    faiss_metric = fmt.faiss_metric(metric)
    spec_rec = fmt.FaissSpec(spec, search_params=search_params or {})
    if "IVF" in spec:
        template = faiss.index_factory(d, spec, faiss_metric)
        template.train(x if train is None else train)
        spec_rec = fmt.write_trained_template(path, template, spec, search_params)
    manifest = fmt.Manifest.create(model, spec_rec, {"image": "Represent the given image.", "default": ""},
                                   metric=metric, compact=compact)
    modalities = modalities or [MODALITIES[r % 3] for r in range(n)]
    start = 0
    for number, size in enumerate(split_sizes(n, shards) if isinstance(shards, int) else shards):
        rows = np.arange(start, start + size, dtype=np.int64)
        index = fmt.new_shard_index(path, manifest)
        index.add_with_ids(x[rows], rows)
        meta = fmt.build_meta_table(
            [f"item-{r}" for r in rows], [modalities[r] for r in rows],
            [texts[r] if texts else f"caption {r}" for r in rows],
            [images[r] if images else f"img/{r}.png" for r in rows], [item_meta(int(r)) for r in rows])
        info = fmt.write_shard(path, fmt.shard_name(number), index, rows, meta, x[rows] if vectors else None)
        manifest = manifest.with_shard(info)
        start += size
    fmt.write_manifest(path, manifest)
    with Store(path / fmt.STORE_DIR) as store:
        store.put_ids({f"item-{r}": r for r in range(n)})
        if len(deleted):
            store.add_tombstones([f"item-{r}" for r in deleted])
    return manifest


class VectorEncoder:
    """A stand-in for TEST_MODEL: the query text "q<i>" embeds to row i of `xq`."""

    name, backbone, fingerprint = TEST_MODEL.id, TEST_MODEL.backbone, None

    def __init__(self, xq):
        self.xq, self.dim = np.ascontiguousarray(xq, dtype=np.float32), xq.shape[1]
        self.seen = []

    def encode(self, inputs, instruction=None, batch_size=None, show_progress=None):
        self.seen.extend(inputs)
        return self.xq[[int(q.text[1:]) for q in inputs]]


def brute_force(x, xq, k, allowed=None, metric="inner_product"):
    """Exact (D, I) over the rows of x allowed by the bool mask (faiss convention)."""
    rows = np.arange(len(x)) if allowed is None else np.flatnonzero(allowed)
    fm = faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2
    D, pos = faiss.knn(xq, np.ascontiguousarray(x[rows]), min(k, max(len(rows), 1)), metric=fm)
    I = np.where(pos >= 0, rows[np.maximum(pos, 0)], -1) if len(rows) else np.full(pos.shape, -1)
    if I.shape[1] < k:
        pad = k - I.shape[1]
        worst = -np.finfo(np.float32).max if metric == "inner_product" else np.finfo(np.float32).max
        D = np.hstack([D, np.full((len(xq), pad), worst, np.float32)])
        I = np.hstack([I, np.full((len(xq), pad), -1)])
    return D, I


def assert_same_knn(D, I, Dref, Iref, x, xq, atol=1e-4, metric="inner_product"):
    """Equal up to ties: the same scores in order, every returned id really has its
    score, ids strictly better than the k-th score identical, -1 at the same places."""
    assert D.shape == Dref.shape and I.shape == Iref.shape
    np.testing.assert_array_equal(I >= 0, Iref >= 0)
    valid = I >= 0
    np.testing.assert_allclose(D[valid], Dref[valid], atol=atol)
    q, j = np.nonzero(valid)
    real = np.einsum("ij,ij->i", xq[q], x[I[q, j]]) if metric == "inner_product" else \
        ((xq[q] - x[I[q, j]]) ** 2).sum(1)
    np.testing.assert_allclose(real, D[valid], atol=atol)
    for row in range(len(I)):
        ids, ref = I[row][valid[row]], Iref[row][valid[row]]
        assert len(set(ids.tolist())) == len(ids), f"query {row}: duplicate ids {ids}"
        if len(ids):
            sign = 1 if metric == "inner_product" else -1
            kth = sign * Dref[row][valid[row]][-1]
            strict = sign * Dref[row][valid[row]] > kth + atol
            assert set(ids[sign * D[row][valid[row]] > kth + atol]) == set(ref[strict]), f"query {row}"


# --- the helpers themselves ------------------------------------------------------------

def test_built_indexes_verify(tmp_path):
    x = clustered(301, seed=1)
    for spec in ("Flat", "HNSW16", "IVF8,PQ16x4fs,RFlat"):
        path = tmp_path / spec.replace(",", "_")
        manifest = build_index(path, x, spec, shards=3, deleted=[5, 200])
        assert fmt.verify_index(path) == []
        assert manifest.total_rows == 301 and len(manifest.shards) == 3


def test_oracle_tolerates_ties_only():
    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]  # rows 0 and 1 tie
    xq = np.eye(4, dtype=np.float32)[:1]
    D, I = brute_force(x, xq, 1)
    assert_same_knn(D, np.array([[1 - I[0, 0]]]), D, I, x, xq)  # the other tied row is fine
    try:
        assert_same_knn(D, np.array([[2]]), D, I, x, xq)
    except AssertionError:
        return
    raise AssertionError("a wrong id passed the oracle")
