"""Embedding families: recipes as data, choosing a family, Matryoshka sizes, each model's
own task prompts, and what an index records. Parity against each family's reference
code is tests/test_family_parity.py."""
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import mmsearch
from mmsearch.encoders.recipes import FAMILIES, JINA_IMAGE, get_recipe
from mmsearch.errors import IndexMismatchError, ModelLoadError
from mmsearch.index_format import ModelInfo
from mmsearch.tasks import get_task


def _image(seed=0, size=(96, 80)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


# --- recipes -----------------------------------------------------------------------------

def test_rendered_strings_per_family():
    vlm2vec, gme, qwen3, jina = (get_recipe(n) for n in ("vlm2vec", "gme", "qwen3_vl_embedding", "jina_v4"))
    assert vlm2vec.render("qwen2_vl", "query", "a dog", "Find it:", True) == "<|image_pad|> Find it: a dog"
    assert vlm2vec.render("llava_next", "candidate", "a dog", None, True) == "<image>  a dog"  # process_input_text
    assert vlm2vec.render("qwen2_vl", "query", "a dog", "", False) == "a dog"
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert gme.render("qwen2_vl", "query", "a dog", "Find it.", True) == (
        f"<|im_start|>system\nFind it.<|im_end|>\n<|im_start|>user\n{vision}a dog<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>")
    # GME's documents always take its default instruction
    assert "system\nYou are a helpful assistant.<|im_end|>" in gme.render("qwen2_vl", "candidate", "x", "Other", False)
    assert "system\nYou are a helpful assistant.<|im_end|>" in gme.render("qwen2_vl", "query", "x", None, False)
    # Qwen3-VL-Embedding: a full stop after an instruction without final punctuation
    q3 = qwen3.render("qwen3_vl", "query", "a dog", "Find the image", True)
    assert q3 == (f"<|im_start|>system\nFind the image.<|im_end|>\n<|im_start|>user\n{vision}a dog<|im_end|>\n"
                  "<|im_start|>assistant\n")
    assert "system\nWhere is it?<|im_end|>" in qwen3.render("qwen3_vl", "query", "x", "Where is it?", False)
    assert "system\nRepresent the user's input.<|im_end|>" in qwen3.render("qwen3_vl", "candidate", "x", None, False)
    assert jina.render("qwen2_5_vl", "query", "a dog", "ignored", False) == "Query: a dog"
    assert jina.render("qwen2_5_vl", "candidate", "a dog", None, False) == "Passage: a dog"
    assert jina.render("qwen2_5_vl", "candidate", None, None, True) == JINA_IMAGE
    with pytest.raises(ModelLoadError, match="jina_v4 family embeds text or image"):
        jina.render("qwen2_5_vl", "query", "a dog", None, True)


def test_every_family_is_listed_and_unknown_ones_name_them(tiny_dir):
    assert {"vlm2vec", "gme", "qwen3_vl_embedding", "jina_v4", "clip", "siglip", "mmsearch"} <= set(FAMILIES)
    with pytest.raises(ModelLoadError, match="unknown model family 'colbert'.*vlm2vec.*gme"):
        mmsearch.load_encoder(tiny_dir("qwen2_vl"), family="colbert", device="cpu")
    with pytest.raises(ModelLoadError, match="qwen3_vl_embedding family runs on qwen3_vl checkpoints, not 'qwen2_vl'"):
        mmsearch.load_encoder(tiny_dir("qwen2_vl"), family="qwen3_vl_embedding", device="cpu")


# --- choosing a family -------------------------------------------------------------------

def test_family_by_backbone_card_and_call(tiny_dir, tmp_path):
    src = tiny_dir("qwen2_vl")
    assert mmsearch.load_encoder(src, device="cpu").family == "vlm2vec"  # qwen2_vl's default
    card = tmp_path / "card"
    shutil.copytree(src, card)
    (card / "mmsearch.json").write_text(json.dumps({"family": "gme", "tasks": {"t2i": ["Find it.", ""]}}))
    enc = mmsearch.load_encoder(card, device="cpu")
    assert enc.family == "gme" and enc.task_instruction("t2i") == "Find it."
    assert mmsearch.load_encoder(card, family="mmsearch", device="cpu").family == "mmsearch"  # the call wins
    (card / "mmsearch.json").write_text(json.dumps({"family": "gme", "tasks": {"t2i": "just one"}}))
    with pytest.raises(ModelLoadError, match="mmsearch.json: task 't2i' must be"):
        mmsearch.load_encoder(card, device="cpu")
    assert mmsearch.load_encoder(tiny_dir("clip"), device="cpu").family == "clip"


def test_positions_rule_separates_vlm2vec_from_mmsearch(tiny_dir):
    """Same weights, same string: VLM2Vec (1D positions) and mmsearch's own family (M-RoPE)
    agree on text and differ on images."""
    a = mmsearch.load_encoder(tiny_dir("qwen2_vl"), family="vlm2vec", device="cpu")
    b = mmsearch.load_encoder(tiny_dir("qwen2_vl"), family="mmsearch", device="cpu")
    inputs = ["a red bus", _image(1, (200, 180))]
    va, vb = a.encode(inputs), b.encode(inputs)
    assert np.allclose(va[0], vb[0], atol=1e-5)
    assert float(va[1] @ vb[1]) < 0.99999


# --- Matryoshka --------------------------------------------------------------------------

def test_dim_truncates_and_renormalises_listed_sizes_only(tiny_dir):
    path = tiny_dir("qwen2_5_vl")
    full = mmsearch.load_encoder(path, family="jina_v4", device="cpu")
    assert full.dim == full.full_dim == 64
    # the tiny model is 64-d: the recipe's 128..2048 sizes do not fit, so allow a tiny size here
    recipe = full.recipe.with_overrides(matryoshka=(16, 32))
    full.recipe = recipe
    cut = mmsearch.load_encoder(path, family="jina_v4", device="cpu")
    cut.recipe, cut.dim = recipe, recipe.check_dim(32, cut.full_dim)
    inputs = ["a red bus", "two cats", _image(2)]
    xf, xc = full.encode(inputs), cut.encode(inputs)
    expected = xf[:, :32] / np.linalg.norm(xf[:, :32], axis=1, keepdims=True)
    assert xc.shape == (3, 32) and np.allclose(xc, expected, atol=1e-6)
    with pytest.raises(ModelLoadError, match="dim=48 is not a Matryoshka size of the jina_v4 family; valid: 16, 32"):
        recipe.check_dim(48, 64)
    with pytest.raises(ModelLoadError, match="dim=32 is not a Matryoshka size of the jina_v4 family; valid: none below this model's 64 "
                                             r"dimensions \(the family lists 128, 256"):
        mmsearch.load_encoder(path, family="jina_v4", dim=32, device="cpu")
    with pytest.raises(ModelLoadError, match="vlm2vec family has no Matryoshka sizes"):
        mmsearch.load_encoder(tiny_dir("qwen2_vl"), dim=32, device="cpu")
    assert get_recipe("qwen3_vl_embedding").check_dim(64, 2048) == 64  # any size from 64 up
    with pytest.raises(ModelLoadError, match="valid: 64..2048"):
        get_recipe("qwen3_vl_embedding").check_dim(32, 2048)
    with pytest.raises(ModelLoadError, match="vectors have 64 dimensions, and the qwen3_vl_embedding family truncates "
                                             "to 64 or more, so there is nothing to truncate to"):
        get_recipe("qwen3_vl_embedding").check_dim(32, 64)


# --- each model's own task prompts ---------------------------------------------------------

def test_builtin_model_resolves_tasks_to_its_trained_prompts():
    from mmsearch.datasets.specs import TASK_SPECS

    tiny = mmsearch.load_encoder(device="cpu")
    assert tiny.family == "mmsearch"
    for name, spec in TASK_SPECS.items():  # the card's prompts are the training data's
        assert tiny.task_instruction(name, "query") == spec.instruction
        assert tiny.task_instruction(name, "candidate") == spec.candidate_instruction
    # a task the model was not trained on falls back to the library
    assert tiny.task_instruction("i2i") == get_task("i2i").query_instruction


def test_family_task_tables_and_document_instructions(tiny_dir):
    gme = mmsearch.load_encoder(tiny_dir("qwen2_vl"), family="gme", device="cpu")
    assert gme.task_instruction("t2i") == "Find an image that matches the given text."
    assert gme.task_instruction("doc", "candidate") == "You are a helpful assistant."
    assert gme.task_instruction("doc") == get_task("doc").query_instruction  # the library's, for queries
    jina = mmsearch.load_encoder(tiny_dir("qwen2_5_vl"), family="jina_v4", device="cpu")
    assert jina.task_instruction("t2i") == "" and jina.candidate_instructions() == {"default": ""}
    assert gme.candidate_instructions() == {"default": "You are a helpful assistant."}


def test_tasks_command_shows_the_models_prompts(capsys):
    from mmsearch.cli import main

    assert main(["tasks", "--model", "mmsearch-tiny", "--source", "generic", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["t2i"]["query_instruction"] == "Find an image that matches the given caption."
    assert rows["t2i"]["source"] == "model" and rows["i2i"]["source"] == "generic"
    assert main(["tasks", "--source", "generic", "--json"]) == 0
    library = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert library["t2i"]["query_instruction"] == get_task("t2i").query_instruction


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from mmsearch.datasets import make

    root = tmp_path_factory.mktemp("family-scenes")
    make(root, format="mbeir", size=120, seed=21, tasks=("t2i",), splits=("test",))
    pool = [json.loads(x) for x in (root / "cand_pool" / "local" / "mbeir_synthshapes_task0_cand_pool.jsonl")
            .read_text().splitlines()]
    queries = [json.loads(x) for x in (root / "query" / "test" / "mbeir_synthshapes_task0_test.jsonl")
               .read_text().splitlines()]
    return root, pool, queries


def test_builtin_model_answers_task_t2i_with_its_own_prompt(scenes, tmp_path):
    """`task="t2i"` on freshly generated scenes: the built-in model's own prompt, through
    an index built with its default candidate instructions."""
    root, pool, queries = scenes
    rows = [{"id": c["did"], "image": str(root / c["img_path"])} for c in pool]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index_dir = tmp_path / "index"
    mmsearch.build_index([str(tmp_path / "pool.jsonl")], index_dir, index="Flat")
    index = mmsearch.open_index(index_dir)
    relevant = [{str(p) for p in q["pos_cand_list"]} for q in queries]
    hits = index.search([mmsearch.Query(text=q["query_txt"], task="t2i") for q in queries], k=1)
    r1 = np.mean([h[0].id in rel for h, rel in zip(hits, relevant)])
    mscoco = get_task("t2i").query_instruction  # the library's wording, which it never saw
    other = index.search([q["query_txt"] for q in queries], k=1, instruction=mscoco)
    r1_other = np.mean([h[0].id in rel for h, rel in zip(other, relevant)])
    print(f"t2i R@1 over {len(pool)} scenes: own prompt {r1:.3f}, MSCOCO prompt {r1_other:.3f}")
    assert r1 >= 0.85 and r1 > r1_other + 0.3


# --- the index records the family ----------------------------------------------------------

def test_manifest_records_family_and_legacy_indexes_keep_their_rule(tiny_dir, tmp_path):
    from mmsearch.index_format import read_manifest, write_manifest

    import dataclasses

    path = tiny_dir("qwen2_vl")
    _image(3, (150, 170)).save(tmp_path / "img.png")
    rows = [{"id": f"i{k}", "text": t} for k, t in enumerate(["a red bus", "two cats", "a dog"])]
    rows.append({"id": "img", "image": "img.png"})
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "index"
    mmsearch.build_index([str(tmp_path / "items.jsonl")], out, model=str(path), index="Flat", device="cpu")
    manifest = read_manifest(out)
    assert manifest.model.family == "vlm2vec" and manifest.model.rule == "1"
    # an index from before families: its Qwen2-VL vectors were made with M-RoPE positions
    legacy = manifest.model.to_dict()
    legacy.pop("family"), legacy.pop("rule")
    info = ModelInfo.from_dict(legacy)
    assert info.effective_family == "mmsearch" and info.encoder_options()["family"] == "mmsearch"
    write_manifest(out, dataclasses.replace(manifest, model=info))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = mmsearch.open_index(out, device="cpu")
    assert any("M-RoPE" in str(w.message) and "--fresh" in str(w.message) for w in caught)
    assert index.encoder.family == "mmsearch"  # the old rule, so its vectors stay comparable
    with pytest.raises(IndexMismatchError, match="family: index has 'mmsearch', encoder has 'vlm2vec'"):
        mmsearch.open_index(out, encoder=mmsearch.load_encoder(path, device="cpu"))
