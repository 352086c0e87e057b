"""Index choice and search defaults calibrated at build time on held-out queries.

Every recall here is checked against brute force on queries that were never indexed."""
import faiss
import numpy as np
import pytest

from mmsearch.cli import main as cli
from mmsearch.errors import InputError
from mmsearch.indexer import calibrate, planner
from mmsearch.indexer.settings import BuildSettings
from mmsearch.indexer.vectors import index_vectors
from mmsearch.query import open_index

FACTORY = "IVF64,PQ16x4fs,RFlat"
TARGET = 0.95
OLD_DEFAULTS = {"nprobe": 16, "k_factor": 8}   # the fixed defaults of issue #23


def _broad(n, d=64, seed=0):
    """Broad, overlapping clusters: neighbours spread over many IVF lists and 4-bit PQ ranks them
    poorly, so both nprobe and the refine depth must be large (fixed defaults fall short)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(search, xb, xq):
    _, truth = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    return calibrate.recall(search(xq), truth)


@pytest.fixture(scope="module")
def data():
    return _broad(30_000), _broad(500, seed=1)     # base to index, held-out queries (never indexed)


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    xb, _ = data
    out = tmp_path_factory.mktemp("calibrated") / "idx"
    manifest = index_vectors(out, xb, [str(i) for i in range(len(xb))], index=FACTORY, shard_size=len(xb),
                             store_vectors=False, train_size=len(xb), recall_target=TARGET)
    return out, manifest


def test_calibrated_defaults_reach_the_target_where_fixed_defaults_miss(data, built):
    xb, xq = data
    out, manifest = built
    idx = open_index(out)
    assert _recall(lambda q: idx.search_vectors(q, 10)[1], xb, xq) >= TARGET - 0.01   # 500 queries: +-0.01
    fixed = _recall(lambda q: idx.search_vectors(q, 10, params=OLD_DEFAULTS)[1], xb, xq)
    assert fixed < 0.9
    assert manifest.faiss.search_params["k_factor"] > OLD_DEFAULTS["k_factor"]   # PQ ranks poorly: refine deeper


def test_the_recorded_recall_matches_brute_force_on_other_held_out_queries(data, built):
    xb, xq = data
    out, manifest = built
    recorded = manifest.faiss.calibration
    assert recorded["target"] == TARGET and recorded["queries"] == 1000
    measured = _recall(lambda q: open_index(out).search_vectors(q, 10)[1], xb, xq)
    assert abs(recorded["recall_at_10"] - measured) <= 0.02


def test_index_info_prints_the_calibrated_recall(built, capsys):
    out, manifest = built
    assert cli(["index", "info", str(out)]) == 0
    assert f"calibrated recall@10 {manifest.faiss.calibration['recall_at_10']} (target 0.95" in capsys.readouterr().out


def test_choose_keeps_the_only_candidate_that_reaches_the_target(data):
    """4-bit PQ without refine cannot reach 0.95 here; HNSW can, so it wins whatever the timings."""
    xb, xq = data
    plan = planner.Plan("IVF64,PQ16x4fs", nlist=64, candidates=("IVF64,PQ16x4fs", "HNSW32"))
    choice = planner.choose(plan, xb.shape[1], xb[:12_000], TARGET)
    assert choice.factory == "HNSW32" and set(choice.calibration["candidates"]) == set(plan.candidates)
    assert choice.calibration["candidates"]["IVF64,PQ16x4fs"]["recall_at_10"] < TARGET
    index = faiss.clone_index(choice.template)
    index.add(xb[:12_000])
    params = faiss.SearchParametersHNSW(efSearch=choice.setting.params["efSearch"])
    assert _recall(lambda q: index.search(q, 10, params=params)[1], xb[:12_000], xq) >= TARGET - 0.01


def test_auto_measures_ivf_and_hnsw_above_the_flat_limit():
    assert planner.auto_candidates(1000, 64) == ("Flat",)
    candidates = planner.auto_candidates(200_000, 768)
    assert candidates == ("IVF2048,PQ192x4fs,RFlat", "IVF1024,PQ192x4fs,RFlat", "IVF512,PQ192x4fs,RFlat", "HNSW32")
    # no room for float32 vectors: compact refine only, and no HNSW (it keeps them all)
    tight = planner.auto_candidates(200_000, 768, memory_budget=200_000 * (96 + 8 + 768 * 2) + 1)
    assert tight == tuple(f"IVF{n},PQ192x4fs,Refine(SQfp16)" for n in (2048, 1024, 512))
    assert planner.list_counts(60_000) == (1024, 512, 256) and planner.list_counts(100) == (64,)


def test_tune_filled_recalibrates_a_bigger_shard_with_hidden_rows(data):
    """Hidden rows (a selector) behave as rows never indexed: the recall it reports holds for
    real held-out queries on the same index."""
    xb, xq = data
    index = faiss.index_factory(xb.shape[1], FACTORY, faiss.METRIC_INNER_PRODUCT)
    index.train(xb[:3000])
    index.add(xb)
    tuning = planner.tune_filled(index, xb, TARGET)
    assert tuning["recall_at_10"] >= TARGET
    params = calibrate.search_parameters(index, planner.search_defaults(tuning))
    assert abs(_recall(lambda q: index.search(q, 10, params=params)[1], xb, xq) - tuning["recall_at_10"]) <= 0.02


def test_a_build_retunes_its_defaults_on_a_shard_bigger_than_the_sample(data, tmp_path):
    xb, xq = data
    manifest = index_vectors(tmp_path / "idx", xb, [str(i) for i in range(len(xb))], index=FACTORY,
                             shard_size=len(xb), store_vectors=False, train_size=3000, recall_target=TARGET)
    assert manifest.faiss.calibration["rows"] == len(xb)
    idx = open_index(tmp_path / "idx")
    assert _recall(lambda q: idx.search_vectors(q, 10)[1], xb, xq) >= TARGET - 0.01


@pytest.mark.parametrize("refine", ["Refine(SQfp16)", "Refine(SQ8)"])
def test_compact_refine_stages_reach_the_target(data, tmp_path, refine):
    """When float32 vectors exceed the memory budget, `auto` refines from float16 or 8-bit codes;
    calibrated like RFlat, they still reach the target on held-out queries (4-bit PQ alone cannot)."""
    xb, xq = data
    per_dim = dict(planner.REFINES)[refine]
    budget = len(xb) * (8 + 8 + xb.shape[1] * per_dim) + 1            # ids + codes + this refine's vectors
    manifest = index_vectors(tmp_path / "idx", xb, [str(i) for i in range(len(xb))], memory_budget=budget,
                             shard_size=len(xb), store_vectors=False, train_size=3000, recall_target=TARGET)
    assert manifest.faiss.factory.endswith("," + refine) and "k_factor" in manifest.faiss.search_params
    idx = open_index(tmp_path / "idx")
    assert _recall(lambda q: idx.search_vectors(q, 10)[1], xb, xq) >= TARGET - 0.01
    pq_only = faiss.index_factory(xb.shape[1], "IVF64,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    pq_only.train(xb[:3000])
    pq_only.add(xb)
    assert _recall(lambda q: pq_only.search(q, 10, params=faiss.SearchParametersIVF(nprobe=64))[1], xb, xq) < 0.8


@pytest.mark.parametrize("bad", [0, 1.5, -0.1])
def test_the_target_recall_must_be_a_recall(bad):
    with pytest.raises(InputError, match="recall_target"):
        BuildSettings(recall_target=bad)


def test_the_cli_refuses_a_target_recall_out_of_range(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["index", "build", "x.jsonl", "--out", "o", "--target-recall", "1.2"])
    assert e.value.code == 2 and "expected a recall in (0, 1]" in capsys.readouterr().err


def test_auto_end_to_end_reaches_the_target_on_held_out_queries(data, tmp_path, monkeypatch):
    """`auto` above the Flat limit (lowered here so the test takes seconds): whichever candidate
    the timings pick, its recorded recall holds on queries that were never indexed."""
    xb, xq = data
    base = xb[:10_000]
    monkeypatch.setattr(planner, "FLAT_MAX_ROWS", 5_000)
    manifest = index_vectors(tmp_path / "idx", base, [str(i) for i in range(len(base))], shard_size=len(base),
                             store_vectors=False)
    assert set(manifest.faiss.calibration["candidates"]) == set(planner.auto_candidates(len(base), 64))
    assert manifest.faiss.factory in manifest.faiss.calibration["candidates"]
    measured = _recall(lambda q: open_index(tmp_path / "idx").search_vectors(q, 10)[1], base, xq)
    assert measured >= TARGET - 0.01
    assert abs(manifest.faiss.calibration["recall_at_10"] - measured) <= 0.02


def test_auto_weighs_a_graph_by_the_graphs_it_will_be_searched_as(monkeypatch):
    """IVF shards are searched joined; a graph grows as one shard while it fits in memory,
    beyond that its shards are walked one after another: then a graph's measured cost counts
    once per shard, and IVF (which reaches the target here) wins whatever the two measured on
    the one-shard sample."""
    sample = _broad(12_000, d=32, seed=3)
    assert planner.plan("auto", 32, 60_000, None, shard_size=100).graphs == 1  # grows: one graph
    monkeypatch.setattr(planner, "join_budget", lambda: 60_000 * (2 * 4 * 32 + planner.HNSW_BYTES_PER_ROW) - 1)
    one = planner.plan("auto", 32, 60_000, None, shard_size=60_000)
    many = planner.plan("auto", 32, 60_000, None, shard_size=100)
    assert (one.graphs, many.graphs) == (1, 600) and "HNSW32" in many.candidates
    choice = planner.choose(many, 32, sample, TARGET)
    assert choice.factory.startswith("IVF") and choice.calibration["graphs_planned"] == 600
    measured = choice.calibration["candidates"]
    assert set(measured) == set(many.candidates)
