"""The model shipped in the package: the default everywhere, offline."""
import numpy as np
import pytest

import mmsearch
from mmsearch.encoders.loading import DEFAULT_MODEL, builtin_model_path


@pytest.fixture(scope="module")
def tiny():
    return mmsearch.load_encoder(device="cpu")  # no model given: the built-in one


def test_default_model_loads_offline_and_is_small(tiny):
    path = builtin_model_path(DEFAULT_MODEL)
    assert tiny.name == DEFAULT_MODEL and tiny.backbone == "qwen2_vl" and tiny.dim == 192
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20 * 2**20
    assert (path / "README.md").read_text().count("mmsearch train") >= 1  # the card gives the command


def test_default_model_retrieves_a_caption_better_than_chance(tiny, tmp_path):
    """Rendered scenes: each caption must rank its own image first more often than chance allows."""
    from mmsearch.datasets import make

    make(tmp_path, format="mbeir", size=40, seed=11, tasks=("t2i",), splits=("test",))
    import json

    pool = [json.loads(x) for x in (tmp_path / "cand_pool" / "local" /
                                    "mbeir_synthshapes_task0_cand_pool.jsonl").read_text().splitlines()]
    queries = [json.loads(x) for x in (tmp_path / "query" / "test" /
                                       "mbeir_synthshapes_task0_test.jsonl").read_text().splitlines()]
    prompt = (tmp_path / "instructions" / "query_instructions.tsv").read_text().splitlines()[1].split("\t")[4]
    cands = tiny.encode([mmsearch.Item(id=c["did"],
                         image=str(tmp_path / c["img_path"])) for c in pool], instruction="Represent the given image.")
    qv = tiny.encode([mmsearch.Query(text=q["query_txt"], instruction=prompt) for q in queries])
    top = np.argmax(qv @ cands.T, axis=1)
    correct = np.mean([pool[t]["did"] in {str(p) for p in q["pos_cand_list"]} for t, q in zip(top, queries)])
    assert correct >= 0.3, correct  # chance is 1/len(pool) ~ 0.02; the card reports the full numbers
