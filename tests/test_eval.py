"""Evaluation harnesses: metrics against trec_eval, M-BEIR and MMEB against independent recomputation."""
import json
import shutil

import numpy as np
import pytest

import mmsearch
from mmsearch.datasets import make
from mmsearch.eval.mbeir import MBeirSettings, run_mbeir
from mmsearch.eval.mbeir_data import positives
from mmsearch.eval.metrics import evaluate, hit_at, read_trec_run
from mmsearch.eval.mmeb import evaluate_dataset, find_datasets, query_prompt, summarize, task_table
from mmsearch.indexer.settings import DEFAULT_INSTRUCTIONS


def _random_run(rng, n_q=40, n_docs=60, depth=20):
    qrels, run = {}, {}
    for q in range(n_q):
        qid = f"q{q}"
        qrels[qid] = {f"d{d}" for d in rng.choice(n_docs, size=rng.integers(1, 4), replace=False)}
        run[qid] = [f"d{d}" for d in rng.choice(n_docs, size=depth, replace=False)]
    return run, qrels


def test_metrics_match_trec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    run, qrels = _random_run(rng)
    ours = evaluate(run, qrels, recall_at=(1, 5, 10))
    trec_run = {q: {d: float(len(ds) - i) for i, d in enumerate(ds[:10])} for q, ds in run.items()}
    trec_qrels = {q: {d: 1 for d in rel} for q, rel in qrels.items()}
    res = pytrec_eval.RelevanceEvaluator(trec_qrels, {"ndcg_cut_10", "recip_rank"}).evaluate(trec_run)
    assert ours["ndcg@10"] == pytest.approx(np.mean([r["ndcg_cut_10"] for r in res.values()]), abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(np.mean([r["recip_rank"] for r in res.values()]), abs=1e-9)
    for k in (1, 5, 10):  # hit@k by hand
        want = np.mean([any(d in qrels[q] for d in run[q][:k]) for q in run])
        assert ours[f"recall@{k}"] == pytest.approx(want)
    assert hit_at(["a", "b"], {"b"}, 1) == 0.0 and hit_at(["a", "b"], {"b"}, 2) == 1.0


def test_positives_accept_strings_and_objects():
    assert positives({"pos_cand_list": ["1:2", {"did": "1:3"}, {"did": 7}]}) == {"1:2", "1:3", "7"}


@pytest.fixture(scope="module")
def mbeir_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mbeir")
    make(root, format="mbeir", size=8, seed=3, tasks=("t2i", "composed"), splits=("test",))
    return root


def test_mbeir_runs_equal_brute_force_and_metrics_recompute(mbeir_root, tmp_path, tiny_encoder):
    enc = tiny_encoder("qwen2_vl")
    s = MBeirSettings(root=mbeir_root, work=tmp_path, pools=("local", "global"))
    results = run_mbeir(s, enc)
    assert {(r.pair, r.pool) for r in results} == {(p, pool) for p in ("synthshapes_task0", "synthedit_task7")
                                                   for pool in ("local", "global")}
    assert all(r.error is None and r.scored == 8 for r in results)
    # recompute every metric from the run files and the qrels
    for r in results:
        run = read_trec_run(tmp_path / "runs" / r.pool / f"{r.pair}_test.trec")
        ds, task = r.pair.split("_task")
        qrels = {}
        for line in (mbeir_root / "qrels" / "test" / f"mbeir_{ds}_task{task}_test_qrels.txt").read_text().splitlines():
            qid, _, did, rel = line.split()[:4]
            qrels.setdefault(qid, set()).add(did)
        assert evaluate(run, qrels, recall_at=(1, 5, 10)) == pytest.approx(r.metrics)
    # the local t2i ranking equals brute force over independently encoded candidates
    pool = [json.loads(x) for x in (mbeir_root / "cand_pool" / "local" /
                                    "mbeir_synthshapes_task0_cand_pool.jsonl").read_text().splitlines()]
    items = [mmsearch.Item(id=c["did"], text=c["txt"] or None,
                           image=str(mbeir_root / c["img_path"]) if c["img_path"] else None) for c in pool]
    instr = [DEFAULT_INSTRUCTIONS[it.modality] for it in items]
    cand = enc.encode(items, instruction=instr)
    queries = [json.loads(x) for x in (mbeir_root / "query" / "test" /
                                       "mbeir_synthshapes_task0_test.jsonl").read_text().splitlines()]
    prompt = (mbeir_root / "instructions" / "query_instructions.tsv").read_text().splitlines()[1].split("\t")[4]
    run = read_trec_run(tmp_path / "runs" / "local" / "synthshapes_task0_test.trec")
    for q in queries:
        qv = enc.encode([mmsearch.Query(text=q["query_txt"], instruction=prompt)])[0]
        order = np.argsort(-(cand @ qv), kind="stable")[:10]
        assert run[q["qid"]][:3] == [pool[i]["did"] for i in order[:3]]


def test_mbeir_malformed_entries_are_counted_not_crashing(mbeir_root, tmp_path, tiny_encoder):
    root = tmp_path / "broken"
    shutil.copytree(mbeir_root, root)
    qfile = root / "query" / "test" / "mbeir_synthedit_task7_test.jsonl"
    rows = [json.loads(x) for x in qfile.read_text().splitlines()]
    rows[0]["query_img_path"] = "mbeir_images/nope.png"  # a missing query image
    rows[1]["pos_cand_list"] = [{"did": rows[1]["pos_cand_list"][0]}]  # the object form
    qfile.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken line\n")
    qrels = root / "qrels" / "test" / "mbeir_synthedit_task7_test_qrels.txt"
    qrels.write_text(qrels.read_text() + f"{rows[2]['qid']} 0 99:424242 1 7\n")  # a did not in the pool
    (root / "cand_pool" / "local" / "mbeir_synthshapes_task0_cand_pool.jsonl").write_text("")  # empty pool
    results = {(r.pair, r.pool): r for r in run_mbeir(MBeirSettings(root=root, work=tmp_path / "w",
                                                                    pools=("local",)), tiny_encoder("qwen2_vl"))}
    empty = results[("synthshapes_task0", "local")]
    assert empty.error and "empty" in empty.error and not empty.metrics
    edit = results[("synthedit_task7", "local")]
    assert edit.error is None and edit.scored == 7
    assert edit.skipped == {"missing or bad query image": 1, "unreadable query line (JSONDecodeError)": 1}
    assert edit.unknown_qrels_dids == 1


def test_mbeir_resume_reuses_finished_pairs(mbeir_root, tmp_path, tiny_encoder):
    s = MBeirSettings(root=mbeir_root, work=tmp_path, pools=("local",), pairs=("synthshapes_task0",))
    first = run_mbeir(s, tiny_encoder("qwen2_vl"))
    run_file = tmp_path / "runs" / "local" / "synthshapes_task0_test.trec"
    stamp = run_file.stat().st_mtime_ns
    again = run_mbeir(s, tiny_encoder("qwen2_vl"))
    assert again[0].metrics == first[0].metrics and run_file.stat().st_mtime_ns == stamp


def test_mmeb_query_strings():
    token = "<|image_pad|>"
    v1 = {"qry_text": "<|image_1|>\nRepresent the given image for classification\n", "qry_img_path": "a.jpg"}
    assert query_prompt(v1, token) == "<|image_pad|>\nRepresent the given image for classification\n"
    v2 = {"qry_inst": "<|image_1|>\nRepresent the given image for classification", "qry_text": "",
          "qry_img_path": "a.jpg"}
    assert query_prompt(v2, token) == query_prompt(v1, token)
    text_only = {"qry_text": "Find me an everyday image that matches the given caption: a dog.", "qry_img_path": ""}
    assert query_prompt(text_only, token) == text_only["qry_text"]


def test_mmeb_hit_at_1_equals_independent_scoring(tmp_path, tiny_encoder):
    root = tmp_path / "mmeb"
    make(root, format="mmeb", size=6, seed=2, tasks=("t2i", "vqa"), num_candidates=5)
    enc = tiny_encoder("qwen2_vl")
    results = [evaluate_dataset(enc, n, t, root / "images") for n, t in find_datasets(root).items()]
    import pyarrow.parquet as pq
    from PIL import Image

    from mmsearch.encoders.base import Request

    for r in results:
        rows = pq.read_table(root / r.name / "test.parquet").to_pylist()
        hits = []
        for row in rows:
            def req(text, path):
                image = Image.open(root / "images" / path).convert("RGB") if path else None
                prompt = text.replace("<|image_1|>", "<|image_pad|>")
                if image is not None:
                    prompt = prompt.replace(" \n", "\n")
                return Request(text=None, image=image, instruction=None, prompt=prompt)
            q = enc.encode_requests([req(row["qry_text"], row["qry_img_path"])])[0]
            c = enc.encode_requests([req(t, p) for t, p in zip(row["tgt_text"], row["tgt_img_path"])])
            hits.append(float(np.argmax(c @ q) == 0))
        assert r.hit_at_1 == pytest.approx(np.mean(hits)) and r.queries == len(rows)
    summary = summarize(results, task_table(root))
    assert set(summary) >= {"overall"} and 0 <= summary["overall"] <= 1


def test_mbeir_pools_as_compact_codes(mbeir_root, tmp_path, tiny_encoder):
    """`build_options` index the pools as compact codes: binary codes rescored over the whole
    pool rank exactly as float32 does; without rescoring, the Hamming order is another one."""
    enc = tiny_encoder("qwen2_vl")
    pair = ("synthshapes_task0",)

    def runs(work, **build):
        s = MBeirSettings(root=mbeir_root, work=work, pools=("local",), pairs=pair, build_options=build)
        result = run_mbeir(s, enc)[0]
        assert result.error is None, result.error
        return read_trec_run(work / "runs" / "local" / "synthshapes_task0_test.trec")

    exact = runs(tmp_path / "f32")
    assert runs(tmp_path / "bin", precision="binary", oversample=1000.0) == exact
    hamming = runs(tmp_path / "bin_plain", precision="binary", rescore=False)
    assert hamming != exact
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "bin_plain").rglob("manifest.json")]
    assert manifests and all(m["compact"]["precision"] == "binary" for m in manifests)
