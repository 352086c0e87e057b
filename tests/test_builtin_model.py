"""The model shipped in the package: the default everywhere, offline."""
import json

import numpy as np
import pytest

import mmsearch
from mmsearch.datasets.specs import IMAGE_CANDIDATE, PAGE_CANDIDATE
from mmsearch.encoders.loading import DEFAULT_MODEL, builtin_model_path


@pytest.fixture(scope="module")
def tiny():
    return mmsearch.load_encoder(device="cpu")  # no model given: the built-in one


def test_default_model_loads_offline_and_is_small(tiny):
    path = builtin_model_path(DEFAULT_MODEL)
    assert tiny.name == DEFAULT_MODEL and tiny.backbone == "qwen2_vl" and tiny.dim == 192
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20 * 2**20
    assert (path / "README.md").read_text().count("mmsearch train") >= 1  # the card gives the command


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mmsearch.datasets import make

    root = tmp_path_factory.mktemp("builtin-corpus")
    make(root, format="mbeir", size=40, seed=11, tasks=("t2i", "doc"), splits=("test",))
    return root


def _top1(tiny, root, pair: str, candidate_instruction: str) -> float:
    """The share of the pair's test queries (with their M-BEIR prompt) whose best candidate
    in the pair's local pool is a relevant one."""
    def rows(path):
        return [json.loads(x) for x in path.read_text().splitlines()]

    pool = rows(root / "cand_pool" / "local" / f"mbeir_{pair}_cand_pool.jsonl")
    queries = rows(root / "query" / "test" / f"mbeir_{pair}_test.jsonl")
    tsv = (root / "instructions" / "query_instructions.tsv").read_text().splitlines()[1:]
    prompts = {(c[3], c[0], c[1]): c[4] for c in (line.split("\t") for line in tsv)}  # id, query, candidate
    cands = tiny.encode([mmsearch.Item(id=c["did"], image=str(root / c["img_path"])) for c in pool],
                        instruction=candidate_instruction)
    qv = tiny.encode([mmsearch.Query(text=q["query_txt"],
                                     instruction=prompts[(q["qid"].split(":")[0], q["query_modality"], "image")])
                      for q in queries])
    top = np.argmax(qv @ cands.T, axis=1)
    return float(np.mean([pool[t]["did"] in {str(p) for p in q["pos_cand_list"]} for t, q in zip(top, queries)]))


def test_default_model_retrieves_a_caption_better_than_chance(tiny, corpus):
    """Rendered scenes: each caption must rank its own image first far more often than chance (1/40)."""
    assert _top1(tiny, corpus, "synthshapes_task0", IMAGE_CANDIDATE) >= 0.5  # the card reports the full numbers


def test_default_model_reads_document_pages(tiny, corpus):
    """Questions about made-up words find the page that names the word, with the page encoded
    under VLM2Vec's document instruction or the generic image one (an M-BEIR pool, an index of
    screenshots); chance is 1/40."""
    for instruction in (PAGE_CANDIDATE, IMAGE_CANDIDATE):
        assert _top1(tiny, corpus, "synthdocs_task0", instruction) >= 0.4, instruction
