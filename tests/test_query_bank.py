"""The query bank: written at build time or later, read by the hubness reranker."""
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from mmsearch.cli import main
from mmsearch.errors import IndexMismatchError, InputError
from mmsearch.indexer.build import build_index
from mmsearch.indexer.query_bank import write_query_bank
from mmsearch.query import Hubness, open_index
from mmsearch.tasks import resolve_instruction
from mmsearch.types import Query

TASK = "t2t"
TEXTS = ["a red bus on a city street", "a small dog on green grass", "two cats asleep on a blue sofa",
         "a white boat on a calm sea", "a plate of pasta with cheese", "children playing football",
         "a yellow taxi in the rain", "an old bridge over a river", "a bowl of ripe oranges"]
QUERIES = ["a bus", "dogs playing", "a cat on a sofa", "boats at sea", "italian food", "a taxi at night",
           "fruit in a bowl"]


def write_corpus(root):
    root.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"id": f"doc-{i}", "text": t}) for i, t in enumerate(TEXTS)]
    (root / "items.jsonl").write_text("\n".join(rows) + "\n")
    (root / "queries.txt").write_text("\n".join(QUERIES) + "\n\n")  # a blank line is no query
    return root / "items.jsonl", root / "queries.txt"


def snapshot(index_dir):
    return {name: (index_dir / name).read_bytes() for name in ("query_bank.npy", "query_bank.json")}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir):
    corpus, queries = write_corpus(tmp_path_factory.mktemp("bank"))
    out = corpus.parent / "index"
    build_index([corpus], out, model=str(tiny_dir("qwen2_vl")), index="Flat", task=TASK, batch_size=4,
                query_bank=queries)
    return out, corpus, queries


def search_oracle(enc, texts, **query):
    """How a search embeds these texts: the encoder itself, with the Query's task or instruction."""
    return enc.encode([Query(text=t, **query) for t in texts], show_progress=False)


def test_build_stores_the_encoders_own_query_embeddings(built, tiny_encoder):
    out, _, _ = built
    bank, info = np.load(out / "query_bank.npy"), json.loads((out / "query_bank.json").read_text())
    assert bank.dtype == np.float32 and bank.shape == (len(QUERIES), 64)
    np.testing.assert_allclose(bank, search_oracle(tiny_encoder("qwen2_vl"), QUERIES, task=TASK), atol=1e-5)
    assert info["instruction"] == resolve_instruction(task=TASK, side="query") != ""
    assert (info["task"], info["count"], info["dim"]) == (TASK, len(QUERIES), 64)


def test_hubness_uses_the_stored_bank(built, tiny_encoder):
    out, _, _ = built
    enc = tiny_encoder("qwen2_vl")
    with open_index(out, encoder=enc) as index:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # same task as the bank: no warning
            stored = index.search(QUERIES[:4], k=5, task=TASK, rerank="hubness")
        given = index.search(QUERIES[:4], k=5, task=TASK, rerank=Hubness(bank=np.load(out / "query_bank.npy")))
        assert index.query_bank_info()["task"] == TASK
        with pytest.warns(UserWarning, match="query bank was made with query instruction"):
            index.search(QUERIES[0], k=3, task="t2i", rerank="hubness")
    assert [[h.id for h in q] for q in stored] == [[h.id for h in q] for q in given]
    np.testing.assert_allclose([[h.score for h in q] for q in stored], [[h.score for h in q] for q in given])
    assert set(stored[0][0].scores) == {"ann", "hubness"}


def test_cli_rewrites_the_bank(built, tiny_encoder, tmp_path, capsys):
    out = tmp_path / "index"
    shutil.copytree(built[0], out)
    rows = [json.dumps({"query": q} if i % 2 else {"text": q}) for i, q in enumerate(QUERIES[:5])]
    (tmp_path / "q.jsonl").write_text("\n".join(rows) + "\n")
    code = main(["index", "query-bank", str(out), "--queries", str(tmp_path / "q.jsonl"),
                 "--instruction", "Find a caption:", "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (report["count"], report["dim"], report["task"]) == (5, 64, None)
    assert report["instruction"] == "Find a caption:" and report["path"] == str(out / "query_bank.npy")
    oracle = search_oracle(tiny_encoder("qwen2_vl"), QUERIES[:5], instruction="Find a caption:")
    np.testing.assert_allclose(np.load(out / "query_bank.npy"), oracle, atol=1e-5)


def test_cli_build_with_a_bank_and_fresh_drops_it(tmp_path, tiny_dir, capsys):
    corpus, queries = write_corpus(tmp_path)
    common = ["index", "build", str(corpus), "--out", str(tmp_path / "index"), "--model", str(tiny_dir("qwen2_vl")),
              "--index", "Flat", "--no-progress", "--json"]
    assert main(common + ["--query-bank", str(queries)]) == 0
    capsys.readouterr()
    assert np.load(tmp_path / "index" / "query_bank.npy").shape == (len(QUERIES), 64)
    assert json.loads((tmp_path / "index" / "query_bank.json").read_text())["instruction"] == ""  # no task
    assert main(common + ["--fresh"]) == 0  # a rebuilt index has no stale bank
    assert not (tmp_path / "index" / "query_bank.npy").exists()


def test_images_and_composed_queries(built, tiny_encoder, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(built[0], out)
    enc = tiny_encoder("qwen2_vl")
    Image.new("RGB", (40, 30), (200, 20, 20)).save(tmp_path / "red.png")
    bank_inputs = ["a red square", tmp_path / "red.png", Query(text="the same, but blue", image=tmp_path / "red.png")]
    info = write_query_bank(out, bank_inputs, task="composed", encoder=enc)
    oracle = enc.encode([Query(text="a red square", task="composed"),
                         Query(image=tmp_path / "red.png", task="composed"),
                         Query(text="the same, but blue", image=tmp_path / "red.png", task="composed")])
    np.testing.assert_allclose(np.load(out / "query_bank.npy"), oracle, atol=1e-5)
    assert info["count"] == 3 and info["instruction"] == resolve_instruction(task="composed", side="query")


def test_precomputed_vectors_are_normalised(built, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(built[0], out)
    raw = np.random.default_rng(0).normal(size=(11, 64)) * 3
    info = write_query_bank(out, raw, task=TASK)
    stored = np.load(out / "query_bank.npy")
    np.testing.assert_allclose(stored, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert (info["count"], info["task"]) == (11, TASK)


def test_bad_input_names_it_and_keeps_the_bank(built, tiny_encoder, tmp_path, capsys):
    out = tmp_path / "index"
    shutil.copytree(built[0], out)
    before = snapshot(out)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"title": "no text field"}\n')
    cases = [
        (tmp_path / "empty.txt", InputError, "empty.txt has no queries"),
        (tmp_path / "missing.txt", InputError, "missing.txt: No such file"),
        (tmp_path / "bad.jsonl", InputError, r"bad.jsonl:2: expected a string field 'text' or 'query'"),
        ([], InputError, "list is empty"),
        (["ok", ""], InputError, "query #1 of the query bank is an empty string"),
        ([Query(text="x", task="t2i")], InputError, "its own instruction/task"),
        (np.ones((3, 5), np.float32), InputError, r"\(n, 64\) array for this index .* got float32 \(3, 5\)"),
    ]
    for queries, error, message in cases:
        with pytest.raises(error, match=message):
            write_query_bank(out, queries, encoder=tiny_encoder("qwen2_vl"))
    with pytest.raises(IndexMismatchError, match="dim: index has 64"):  # another model: a bank of other vectors
        write_query_bank(out, QUERIES, encoder=tiny_encoder("clip"))
    with pytest.raises(InputError, match="either task or instruction"):
        write_query_bank(out, QUERIES, task=TASK, instruction="x", encoder=tiny_encoder("qwen2_vl"))
    assert main(["index", "query-bank", str(out), "--queries", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_bad_bank_file_fails_a_build_before_it_touches_the_index(built, tiny_dir, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(built[0], out)
    before = (out / "manifest.json").read_bytes(), snapshot(out)
    with pytest.raises(InputError, match="nope.txt"):
        build_index([built[1]], out, model=str(tiny_dir("qwen2_vl")), fresh=True, query_bank=tmp_path / "nope.txt")
    assert ((out / "manifest.json").read_bytes(), snapshot(out)) == before
