"""`mmsearch demo` end to end with the built-in model: corpus, index, four kinds of query, HTML page."""
import json

from mmsearch import cli
from mmsearch.commands.demo import KINDS, QUERIES_PER_KIND


def test_demo_finds_the_known_answers_and_writes_the_page(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--size", "12", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    kinds = [r["kind"] for r in summary["results"]]
    assert kinds == [k[0] for k in KINDS for _ in range(QUERIES_PER_KIND)]
    pool = out / "corpus" / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"
    assert summary["indexed"] == len(pool.read_text().splitlines())   # every candidate of every task
    for r in summary["results"]:
        assert len(r["hits"]) == 5 and [h["rank"] for h in r["hits"]] == [1, 2, 3, 4, 5]
        found = [h["rank"] for h in r["hits"] if h["id"] in r["answers"]]
        assert r["found_at"] == (found[0] if found else None)
    # the built-in model puts most known answers in its top 5 (chance: 5 of the dozens of images or captions)
    assert sum(r["found_at"] is not None for r in summary["results"]) >= 10
    pages = [r for r in summary["results"] if r["kind"] == "question -> document page"]
    assert all(h["text"] for r in pages for h in r["hits"] if h["id"] in r["answers"])  # the page's title
    page = (out / "demo.html").read_text()
    assert page.count("<section>") == len(kinds) and page.count("data:image/png;base64,") >= len(kinds) * 4
    # a second run reuses the corpus and the index
    assert cli.main(["demo", "--out", str(out), "--size", "12", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["indexed"] == 0
