"""`mmsearch eval beir` and the ViDoRe-like collection: metrics against pytrec_eval (trec_eval),
the CLI on a hand-written BEIR collection and on the generated one, and one-line input errors."""
import json

import numpy as np
import pytest

from mmsearch.cli import main
from mmsearch.datasets import VidoreOptions, make_vidore
from mmsearch.datasets.vidore import REGIONS
from mmsearch.errors import InputError
from mmsearch.eval.beir import beir_metrics
from mmsearch.eval.beir_data import read_collection
from mmsearch.eval.metrics import read_trec_run

pytrec_eval = pytest.importorskip("pytrec_eval")

RECALL_KS = (1, 5, 10)
TREC_NAMES = {"ndcg_cut_5": "ndcg@5", "ndcg_cut_10": "ndcg@10", "recall_1": "recall@1", "recall_5": "recall@5",
              "recall_10": "recall@10"}


def trec_eval(run: dict, qrels: dict) -> dict:
    """Per-query metrics from pytrec_eval, the run given as ranked lists (scores = decreasing ranks)."""
    scored = {q: {d: float(len(ids) - i) for i, d in enumerate(ids)} for q, ids in run.items()}
    judged = {q: {d: int(g) for d, g in gains.items()} for q, gains in qrels.items()}
    ev = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.5,10", "recall.1,5,10"})
    return {q: {TREC_NAMES[k]: v for k, v in m.items() if k in TREC_NAMES} for q, m in ev.evaluate(scored).items()}


def test_metrics_equal_pytrec_eval_with_graded_qrels_and_unjudged_queries():
    rng = np.random.default_rng(7)
    docs = [f"d{i}" for i in range(37)]
    qrels, run = {}, {}
    for q in range(23):
        judged = rng.choice(docs, size=int(rng.integers(1, 8)), replace=False)
        qrels[f"q{q}"] = {d: int(rng.integers(0, 4)) for d in judged}  # grades 0..3; 0 = judged not relevant
        run[f"q{q}"] = list(rng.choice(docs, size=int(rng.integers(3, 14)), replace=False))
    qrels["q_none"] = {"d1": 0, "d2": 0}   # judged, nothing relevant
    run["q_none"] = ["d1", "d2"]
    ours = {q: {d: g for d, g in gains.items() if g > 0} for q, gains in qrels.items()}
    means, per_query = beir_metrics(run, ours, RECALL_KS)
    reference = trec_eval(run, qrels)
    relevant = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    assert len(relevant) < len(qrels)  # the convention is exercised: some queries have no relevant doc
    assert set(per_query) == set(relevant)
    for q in relevant:
        for name, value in reference[q].items():
            assert per_query[q][name] == pytest.approx(value, abs=1e-9), (q, name)
    for name in TREC_NAMES.values():
        assert means[name] == pytest.approx(np.mean([reference[q][name] for q in relevant]), abs=1e-9)
    # pytrec_eval scores a query without relevant documents 0; we leave it out of the means instead
    assert all(v == 0 for v in reference["q_none"].values())


def write_text_collection(root, qrels_lines=None):
    """An independent BEIR text collection: titles + texts, graded qrels, a query judged irrelevant."""
    root.mkdir()
    docs = {f"doc{i}": (f"Title {w}", f"{w} lives near the {c} hill") for i, (w, c) in
            enumerate(zip(["amber", "basil", "cobalt", "dune", "ember", "fjord", "garnet"],
                          ["north", "south", "east", "west", "green", "stone", "river"]))}
    with open(root / "corpus.jsonl", "w") as f:
        for did, (title, text) in docs.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    queries = {"q1": "doc0", "q2": "doc3", "q3": "doc5", "q4": "doc6"}
    with open(root / "queries.jsonl", "w") as f:
        for qid, did in queries.items():  # each query's text is exactly its document's title + text
            f.write(json.dumps({"_id": qid, "text": " ".join(docs[did])}) + "\n")
        f.write(json.dumps({"_id": "q-other-split", "text": "never judged"}) + "\n")
    (root / "qrels").mkdir()
    lines = qrels_lines or ["q1\tdoc0\t2", "q1\tdoc1\t1", "q2\tdoc3\t1", "q3\tdoc5\t3", "q3\tdoc2\t1",
                            "q3\tdoc4\t0", "q4\tdoc6\t0"]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return docs, queries


def run_cli(capsys, *argv):
    code = main(["eval", "beir", *map(str, argv), "--no-progress", "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def check_against_trec_eval(report: dict, root):
    """The report's means equal pytrec_eval's over the TREC run file the command wrote."""
    result = report["result"]
    run = read_trec_run(result["run_file"])
    coll = read_collection(root)
    reference = trec_eval(run, coll.qrels)
    scored = [q for q in coll.qrels if coll.qrels[q]]
    assert result["scored"] == len(scored)
    for name in TREC_NAMES.values():
        assert result["metrics"][name] == pytest.approx(np.mean([reference[q][name] for q in scored]), abs=1e-6)
    return run


def test_cli_on_a_hand_written_text_collection(tmp_path, capsys):
    root = tmp_path / "beir-text"
    docs, queries = write_text_collection(root)
    # candidates of task t2t carry no instruction; with none for the queries either, each query's
    # string is its document's, so the exact document must rank first
    code, report, err = run_cli(capsys, root, "--task", "t2t", "--instruction", "", "--k", 1, 5, 10)
    assert code == 0, err
    result = report["result"]
    assert (result["queries"], result["no_relevant"], result["corpus_size"]) == (4, 1, 7)
    run = check_against_trec_eval(report, root)
    assert set(run) == set(queries) and "q-other-split" not in run
    assert all(run[q][0] == did for q, did in queries.items())
    # q1: doc0 (gain 2) first, doc1 (gain 1) somewhere: recall@1 is one of its two relevant docs
    assert result["per_query"]["q1"]["recall@1"] == 0.5
    # a rerun resumes from the index and gives the same numbers
    code, again, err = run_cli(capsys, root, "--task", "t2t", "--instruction", "", "--k", 1, 5, 10)
    assert code == 0, err
    assert again["result"]["metrics"] == result["metrics"]


def test_vidore_v2_parquet_layout_is_read(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    make_vidore(tmp_path / "gen", VidoreOptions(pages=3, queries=5, page_size=128, corpus="parquet"))
    root = tmp_path / "v2"
    for part in ("corpus", "queries", "qrels"):
        (root / part).mkdir(parents=True)
    images = pq.read_table(tmp_path / "gen" / "corpus.parquet").column("image").to_pylist()
    pq.write_table(pa.table({"corpus-id": [0, 1, 2], "image": images, "doc-id": ["a", "a", "b"]}),
                   root / "corpus" / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"query-id": [10, 11], "query": ["where?", "what?"]}),
                   root / "queries" / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"query-id": [10, 11, 11], "corpus-id": [2, 0, 1], "score": [1, 2, 1]}),
                   root / "qrels" / "test-00000-of-00001.parquet")
    coll = read_collection(root)
    assert [d.id for d in coll.corpus] == ["0", "1", "2"]
    assert all(isinstance(d.image, bytes) and d.text is None for d in coll.corpus)
    assert coll.queries == {"10": "where?", "11": "what?"}
    assert coll.qrels == {"10": {"2": 1.0}, "11": {"0": 2.0, "1": 1.0}}


def test_gzipped_corpus_trec_qrels_and_an_empty_document(tmp_path):
    import gzip

    root = tmp_path / "variants"
    (root / "qrels").mkdir(parents=True)
    with gzip.open(root / "corpus.jsonl.gz", "wt") as f:
        f.write('{"_id": "a", "title": "T", "text": "x", "metadata": {}}\n{"_id": "b", "title": "", "text": ""}\n')
    (root / "queries.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    (root / "qrels" / "test.tsv").write_text("1 0 a 1\n1 0 b 2\n")  # TREC: qid iter docid score, no header
    coll = read_collection(root)
    assert [(d.id, d.text) for d in coll.corpus] == [("a", "T x"), ("b", None)]
    assert coll.qrels == {"1": {"a": 1.0, "b": 2.0}}


def test_vidore_like_collection_is_deterministic_and_one_page_answers_each_query(tmp_path):
    opts = VidoreOptions(pages=9, queries=20, page_size=160, seed=3)
    make_vidore(tmp_path / "a", opts)
    make_vidore(tmp_path / "b", opts)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 9 + 3
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    coll = read_collection(tmp_path / "a")
    rows = [json.loads(line) for line in (tmp_path / "a" / "queries.jsonl").read_text().splitlines()]
    assert {r["region"] for r in rows} == set(REGIONS)
    assert all(coll.qrels[r["_id"]] == {r["corpus-id"]: 1.0} for r in rows)
    per_page = {}
    for r in rows:  # a page is asked about each of its regions at most once
        per_page.setdefault(r["corpus-id"], []).append(r["region"])
    assert all(len(set(v)) == len(v) for v in per_page.values())
    with pytest.raises(InputError, match="not empty"):
        make_vidore(tmp_path / "a", opts)


def test_cli_on_the_vidore_like_collection(tmp_path, capsys):
    root = tmp_path / "vidore"
    assert main(["datasets", "make", "vidore", "--out", str(root), "--pages", "12", "--queries", "20",
                 "--page-size", "224", "--no-progress"]) == 0
    code, report, err = run_cli(capsys, root, "--work", tmp_path / "work")
    assert code == 0, err
    result = report["result"]
    assert (result["queries"], result["scored"], result["corpus_size"], result["task"]) == (20, 20, 12, "doc")
    check_against_trec_eval(report, root)


def test_relative_paths_and_a_multi_vector_model(tmp_path, capsys, monkeypatch, tiny_dir):
    """DIR and --work given relative to the working directory (page paths must not be read
    relative to WORK), evaluated with a ColQwen2 checkpoint through its multi-vector index."""
    monkeypatch.chdir(tmp_path)
    assert main(["datasets", "make", "vidore", "--out", "vidore", "--pages", "6", "--queries", "10",
                 "--page-size", "224", "--no-progress"]) == 0
    code, report, err = run_cli(capsys, "vidore", "--work", "work", "--model", str(tiny_dir("colqwen2")))
    assert code == 0, err
    assert (report["result"]["scored"], report["result"]["rejected"]) == (10, 0)
    check_against_trec_eval(report, tmp_path / "vidore")


@pytest.mark.parametrize("breakage, where", [
    ("missing qrels", "qrels/test.tsv"),
    ("unknown corpus id", "test.tsv:3"),
    ("malformed qrels line", "test.tsv:4"),
    ("malformed corpus line", "corpus.jsonl:2"),
])
def test_bad_inputs_give_one_line_errors_naming_file_and_line(tmp_path, capsys, breakage, where):
    root = tmp_path / "bad"
    lines = {"unknown corpus id": ["q1\tdoc0\t1", "q2\tnope\t1"],
             "malformed qrels line": ["q1\tdoc0\t1", "q2\tdoc3\t1", "q3 doc5"]}.get(breakage)
    write_text_collection(root, lines)
    if breakage == "missing qrels":
        (root / "qrels" / "test.tsv").unlink()
    if breakage == "malformed corpus line":
        text = (root / "corpus.jsonl").read_text().splitlines()
        text[1] = text[1][:-3]
        (root / "corpus.jsonl").write_text("\n".join(text) + "\n")
    code, _, err = run_cli(capsys, root)
    assert code == 1
    message = err.strip()
    assert "\n" not in message and where in message, message
