"""The torch-free text runtime (`mmsearch.encoders.text_runtime`) against the authors' code.

Its vectors are held to the same oracles as the torch encoder (`test_family_parity._Oracle`,
written from each family's reference code, on sharpened tiny checkpoints), and the oracles
are first shown to reject the runtime with a planted wrong rule: wrong RoPE base, Qwen3's
q/k norms skipped, Qwen2's q/k/v biases dropped, mean pooling for last-token.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mmsearch
from mmsearch.encoders import load_text_encoder
from mmsearch.encoders.text_runtime import read_safetensors
from mmsearch.types import Query
from test_family_parity import FAMILY_KIND, PARITY, _cos, _Oracle

TEXTS = ("a red bus", "two cats sleeping on a blue sofa next to a small dog running on the grass")
INSTRUCTIONS = (None, "Find an image that matches the given caption.")
# families whose documents are embedded with their own prompt: the candidate side differs
SIDES = {"vlm2vec": ("query",), "gme": ("query", "candidate"), "qwen3_vl_embedding": ("query", "candidate"),
         "jina_v4": ("query", "candidate")}


@pytest.fixture(scope="module")
def checkpoint(sharp_checkpoint, tmp_path_factory):
    """The sharpened checkpoint of a family, its q/k/v biases made non-zero (a fresh model's are
    zero, which would hide a runtime that drops them)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    cache = {}

    def get(family):
        kind = FAMILY_KIND[family]
        if kind not in cache:
            path = tmp_path_factory.mktemp("biased") / kind
            shutil.copytree(sharp_checkpoint(kind), path)
            weights = load_file(str(path / "model.safetensors"))
            g = torch.Generator().manual_seed(1)
            for name, w in weights.items():
                if "visual" not in name and name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                    weights[name] = torch.randn(w.shape, generator=g, dtype=w.dtype)
            save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
            cache[kind] = path
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def oracle(checkpoint):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = _Oracle(family, checkpoint(family))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def runtime(checkpoint):
    cache = {}

    def get(family):
        if family not in cache:
            enc, why = load_text_encoder(str(checkpoint(family)), "cpu", family=family)
            assert enc is not None, why
            cache[family] = enc
        return cache[family]

    return get


def _worst(enc, o, family) -> float:
    """The lowest cosine to the oracle over texts x instructions x sides."""
    worst = 1.0
    for side in SIDES[family]:
        for instruction in INSTRUCTIONS if family != "jina_v4" else (None,):  # jina: prefixes only
            vecs = enc.encode(list(TEXTS), instruction=instruction, side=side)
            for text, v in zip(TEXTS, vecs):
                worst = min(worst, _cos(v, o(text, None, instruction, side)))
    return worst


@pytest.mark.parametrize("family", sorted(SIDES))
def test_text_runtime_matches_authors_oracle(family, oracle, runtime):
    assert _worst(runtime(family), oracle(family), family) >= PARITY


def _planted(enc, **change):
    """A copy of `enc` whose decoder (or recipe) breaks one rule."""
    wrong = copy.copy(enc)
    decoder = wrong.model = copy.copy(enc.model)
    decoder.config = copy.copy(enc.model.config)
    if "rope_theta" in change:
        decoder.inv_freq = enc.model.inv_freq * (10000.0 / change["rope_theta"]) ** (
            np.arange(len(enc.model.inv_freq)) * 2 / decoder.config.head_dim)
    if "qk_norm" in change:
        decoder.config.qk_norm = change["qk_norm"]
    if change.get("no_bias"):
        decoder.w = {k: v for k, v in enc.model.w.items() if not k.endswith("_proj.bias")}
    if "pooling" in change:
        wrong.recipe = dataclasses.replace(enc.recipe, pooling=change["pooling"])
    return wrong


PLANTED = [("vlm2vec", {"rope_theta": 100.0}), ("vlm2vec", {"no_bias": True}), ("vlm2vec", {"pooling": "mean"}),
           ("qwen3_vl_embedding", {"qk_norm": False}), ("qwen3_vl_embedding", {"rope_theta": 100.0}),
           ("jina_v4", {"pooling": "last_token"})]


@pytest.mark.parametrize("family, change", PLANTED)
def test_oracle_rejects_planted_wrong_rule(family, change, oracle, runtime):
    enc = runtime(family)
    assert enc.model.config.qk_norm == (FAMILY_KIND[family] == "qwen3_vl")
    worst = _worst(_planted(enc, **change), oracle(family), family)
    print(f"planted {family} {change}: worst cos {worst:.6f}")
    assert worst < PARITY


def test_image_inputs_go_to_the_torch_encoder(sharp_checkpoint):
    path = str(sharp_checkpoint("qwen2_vl"))
    enc, _ = load_text_encoder(path, "cpu", family="vlm2vec")
    full = mmsearch.load_encoder(path, device="cpu", family="vlm2vec")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8))
    inputs = [Query(text="make it red", image=image), "a red bus", Query(image=image)]
    got, want = enc.encode(inputs), full.encode(inputs)
    assert enc._full is not None  # the torch encoder was loaded for the images
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert enc.fingerprint == full.fingerprint and enc.name == full.name and enc.dim == full.dim


def test_matryoshka_size_as_the_torch_encoder(sharp_checkpoint, tmp_path):
    import shutil

    path = tmp_path / "mrl"
    shutil.copytree(sharp_checkpoint("qwen3_vl"), path)
    config = json.loads((path / "config.json").read_text())
    config["matryoshka_dims"] = [16, 32]
    (path / "config.json").write_text(json.dumps(config))
    enc, _ = load_text_encoder(str(path), "cpu", family="qwen3_vl_embedding", dim=32)
    full = mmsearch.load_encoder(str(path), device="cpu", family="qwen3_vl_embedding", dim=32)
    assert enc.dim == 32
    np.testing.assert_allclose(enc.encode(list(TEXTS)), full.encode(list(TEXTS)), atol=1e-5)


def test_models_it_cannot_run_say_why(tiny_dir, sharp_checkpoint):
    enc, why = load_text_encoder(str(tiny_dir("clip")), "cpu")
    assert enc is None and "clip" in why
    enc, why = load_text_encoder(str(sharp_checkpoint("qwen2_vl")), "cuda")
    assert enc is None and "cuda" in why


def test_bfloat16_and_float16_weights_read_exactly(tmp_path):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=g).bfloat16(), "b": torch.randn(4, generator=g).half(),
               "c": torch.randn(2, 2, generator=g), "visual.x": torch.zeros(1)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    got = read_safetensors(tmp_path / "w.safetensors", keep=lambda name: not name.startswith("visual"))
    assert sorted(got) == ["a", "b", "c"]
    for name, arr in got.items():
        assert arr.dtype == np.float32
        np.testing.assert_array_equal(arr, tensors[name].float().numpy())


def test_search_without_torch_gives_the_same_hits(tmp_path):
    """A one-off search with runtime="numpy" never imports torch and returns what torch does."""
    rows = [{"id": f"t{i}", "text": f"item {i}: a {c} {s}"} for i, (c, s) in
            enumerate((c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star"))]
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    mmsearch.build_index([str(src)], tmp_path / "idx")
    want = mmsearch.search(tmp_path / "idx", "a blue star", k=5, device="cpu")
    script = ("import json, sys, mmsearch\n"
              f"hits = mmsearch.search({str(tmp_path / 'idx')!r}, 'a blue star', k=5, runtime='numpy')\n"
              "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules,"
              " 'hits': [[h.id, h.score] for h in hits]}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["torch"] is False and out["transformers"] is False
    assert [h for h, _ in out["hits"]] == [h.id for h in want]
    np.testing.assert_allclose([s for _, s in out["hits"]], [h.score for h in want], atol=1e-5)
