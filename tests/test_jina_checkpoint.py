"""jina-embeddings-v4 loaded from its published layout, each task's LoRA merged, against an
oracle written from the authors' code.

The fixture lays a tiny sharpened Qwen2.5-VL (``mmsearch.testing``) out as the
``jinaai/jina-embeddings-v4`` repository is laid out (see ``mmsearch.encoders.jina`` for the
sources of each fact): config.json naming the authors' classes (``auto_map``,
``architectures``) with ``task_names`` / ``matryoshka_dims`` / ``truncate_dim``; backbone
weights in two shards under the legacy names (``model.layers.*``, ``visual.*``, ``lm_head``)
or transformers 5's (``model.language_model.*``, ``model.visual.*``), plus the top-level
``multi_vector_projector``; the custom code files (stubs that raise if anything imports
them); and ``adapters/`` with one peft LoRA holding an A/B pair per task, r=4, lora_alpha=8
(scaling 2, so a wrong scaling shows), named ``base_model.model.<module>.lora_A.<task>.weight``
(older peft) or ``...lora_A.default.<task>.weight`` (peft 0.21, with transformers 5 names:
the layout peft 0.21 itself loads into MultiAdapterLinear, checked by hand against a scratch
copy of the authors' class; the forward of that class matched the merged weights to 1e-6).

The oracle loads the plain backbone with transformers, adds the task's LoRA output at run
time as ``custom_lora_module.MultiAdapterLinear.forward`` does (``base(x) + B(A(x)) * alpha/r``,
forward hooks, nothing merged), and embeds with jina's single-vector rules
(``tests/test_family_parity._Oracle._jina_v4``: prefixes, fixed image prompt, M-RoPE, mean /
vision-span pooling, L2). Under ``text-matching`` both sides take the query prefix
(``JinaEmbeddingsV4Model._validate_encoding_params``).
"""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mmsearch
from mmsearch import testing
from mmsearch.encoders.factory import describe_checkpoint
from mmsearch.encoders.recipes import get_recipe
from mmsearch.errors import ModelLoadError
from conftest import SHARPEN
from test_family_parity import CASES, PARITY, _cos, _Oracle

TASKS = ("retrieval", "text-matching", "code")
R, ALPHA = 4, 8.0
SCALING = ALPHA / R  # ref: MultiAdapterLinear.update_layer (use_rslora False)
LM_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
CUSTOM_CODE = ("modeling_jina_embeddings_v4.py", "configuration_jina_embeddings_v4.py", "custom_lora_module.py",
               "qwen2_5_vl.py")
PROJECTOR_DIM = 128
TEXTS = ("text_short", "text_long")
IMAGES = ("image_a", "image_b")


# ----------------------------------------------------------------------------- the layout


def _lora_tensors(config: dict) -> dict:
    """task -> {legacy module name: (A [r, in], B [out, r])}, seeded per task; the projector too."""
    text = config["text_config"]
    hidden, ffn, heads, kv = (text["hidden_size"], text["intermediate_size"], text["num_attention_heads"],
                              text["num_key_value_heads"])
    kv_dim = hidden // heads * kv
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv_dim, hidden),
              "self_attn.v_proj": (kv_dim, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn)}
    out = {}
    for t, task in enumerate(TASKS):
        g = torch.Generator().manual_seed(100 + t)
        pairs = {}
        for layer in range(text["num_hidden_layers"]):
            for target in LM_TARGETS:
                o, i = shapes[target]
                pairs[f"model.layers.{layer}.{target}"] = (torch.randn(R, i, generator=g) * 0.05,
                                                           torch.randn(o, R, generator=g) * 0.05)
        pairs["multi_vector_projector"] = (torch.randn(R, hidden, generator=g) * 0.05,
                                           torch.randn(PROJECTOR_DIM, R, generator=g) * 0.05)
        out[task] = pairs
    return out


def _v5_name(legacy: str) -> str:
    if legacy.startswith("model."):
        return "model.language_model." + legacy[len("model."):]
    if legacy.startswith("visual."):
        return "model.visual." + legacy[len("visual."):]
    return legacy


def _write_jina_layout(plain, out, lora: dict, names: str):
    """`plain` (a tiny Qwen2.5-VL folder) laid out as jinaai/jina-embeddings-v4, in `out`."""
    shutil.copytree(plain, out)
    rename = _v5_name if names == "v5" else (lambda k: k)
    # config.json: the custom classes and the fields the authors' code reads
    config = json.loads((out / "config.json").read_text())
    config.update({
        "architectures": ["JinaEmbeddingsV4Model"],
        "auto_map": {"AutoConfig": "configuration_jina_embeddings_v4.JinaEmbeddingsV4Config",
                     "AutoModel": "modeling_jina_embeddings_v4.JinaEmbeddingsV4Model"},
        "task_names": list(TASKS),
        "matryoshka_dims": [128, 256, 512, 1024, 2048],
        "truncate_dim": None,
        "multi_vector_projector_dim": PROJECTOR_DIM,
        "single_vector_pool_strategy": "mean",
        "pretrained_peft_model_name_or_path": None,
        "verbosity": 1,
    })
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # backbone weights (transformers 5 saves the legacy names), the projector, two shards + index
    weights = {rename(k): v for k, v in load_file(str(out / "model.safetensors")).items()}
    (out / "model.safetensors").unlink()
    g = torch.Generator().manual_seed(7)
    hidden = config["text_config"]["hidden_size"]
    weights["multi_vector_projector.weight"] = torch.randn(PROJECTOR_DIM, hidden, generator=g) * 0.02
    weights["multi_vector_projector.bias"] = torch.zeros(PROJECTOR_DIM)
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: weights[k].contiguous() for k in part}, str(out / name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": int(sum(v.numel() * v.element_size() for v in weights.values()))},
             "weight_map": {k: name for name, part in shards.items() for k in part}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    # the authors' code: never to be run by mmsearch
    for name in CUSTOM_CODE:
        (out / name).write_text("raise ImportError('mmsearch must load jina-v4 without its remote code')\n")
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre.update({"processor_class": "JinaEmbeddingsV4Processor",
                "auto_map": {"AutoProcessor": "modeling_jina_embeddings_v4.JinaEmbeddingsV4Processor"}})
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    # adapters/: one peft LoRA, a pair per task (MultiAdapterLinear's ModuleDicts, ".default" dropped on save)
    adapters = out / "adapters"
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "target_modules": "(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
                          "|.*(single_vector_projector|multi_vector_projector).*$)",
        "exclude_modules": ".*visual.*", "use_rslora": False, "use_dora": False, "lora_bias": False,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "rank_pattern": {}, "alpha_pattern": {},
    }, indent=2))
    # peft <= 0.17 saved "lora_A.<task>.weight" (it dropped every ".default"); peft 0.21 drops the adapter
    # name only right before ".weight", so it keeps MultiAdapterLinear's "lora_A.default.<task>.weight"
    adapter = "" if names == "legacy" else "default."
    tensors = {}
    for task, pairs in lora.items():
        for module, (a, b) in pairs.items():
            tensors[f"base_model.model.{rename(module)}.lora_A.{adapter}{task}.weight"] = a.contiguous()
            tensors[f"base_model.model.{rename(module)}.lora_B.{adapter}{task}.weight"] = b.contiguous()
    save_file(tensors, str(adapters / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def jina(tmp_path_factory):
    """The plain sharpened backbone, its LoRA tensors, and the jina-layout folders (legacy / v5 names)."""
    root = tmp_path_factory.mktemp("jina-v4")
    plain = testing.sharpen_attention(testing.build_tiny_model("qwen2_5_vl", root / "plain", seed=0), SHARPEN)
    lora = _lora_tensors(json.loads((plain / "config.json").read_text()))
    repos = {names: _write_jina_layout(plain, root / f"jina-{names}", lora, names) for names in ("legacy", "v5")}
    return {"plain": plain, "lora": lora, "repo": repos}


# ----------------------------------------------------------------------------- the oracle


def _hook_lora(model, pairs: dict, scaling: float):
    """ref: custom_lora_module.py MultiAdapterLinear.forward, one task label:
    result = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling; dropout is the identity in eval."""
    for legacy, (a, b) in pairs.items():
        if legacy == "multi_vector_projector":  # the multi-vector head: not on the single-vector path
            continue
        layer = model.get_submodule(_v5_name(legacy))
        layer.register_forward_hook(
            lambda m, args, out, a=a, b=b: out + torch.nn.functional.linear(torch.nn.functional.linear(args[0], a), b)
            * scaling)


@pytest.fixture(scope="module")
def oracle(jina):
    """oracle(task, scaling) -> _Oracle on the plain backbone with that task's LoRA run at forward
    time (task None: no adapter)."""
    cache = {}

    def get(task, scaling=SCALING):
        key = (task, scaling)
        if key not in cache:
            o = _Oracle("jina_v4", jina["plain"])
            if task is not None:
                _hook_lora(o.model, jina["lora"][task], scaling)
            cache[key] = o
        return cache[key]

    return get


def _expected(o, name: str, side: str, task: str):
    text, image = CASES[name]
    if image is not None:
        return o(None, image)  # ref: process_images: one prompt for every task and side
    # ref: _validate_encoding_params: text-matching -> PREFIX_DICT["query"] for both prompt names
    return o(text, None, None, "query" if task == "text-matching" else side)


@pytest.fixture(scope="module")
def encoder(jina):
    cache = {}

    def get(task, names="legacy"):
        if (task, names) not in cache:
            kwargs = {} if task is None else {"adapter": task}
            cache[(task, names)] = mmsearch.load_encoder(str(jina["repo"][names]), device="cpu", **kwargs)
        return cache[(task, names)]

    return get


def _vectors(enc, names, side):
    inputs = [CASES[n][0] if CASES[n][1] is None else CASES[n][1] for n in names]
    return dict(zip(names, enc.encode(inputs, side=side)))


# ----------------------------------------------------------------------------- recognising the layout


def test_layout_is_recognised_by_its_files(jina):
    ck = describe_checkpoint(str(jina["repo"]["legacy"]))  # no family= given
    assert ck.recipe.name == "jina_v4" and ck.adapter == "retrieval" and ck.jina_layout is not None
    assert ck.jina_layout.task_names == TASKS
    assert describe_checkpoint(str(jina["plain"])).jina_layout is None  # a plain Qwen2.5-VL folder is not one
    assert describe_checkpoint(str(jina["repo"]["legacy"]), adapter="code").adapter == "code"


def test_unknown_adapter_names_the_valid_ones(jina):
    with pytest.raises(ModelLoadError, match="unknown adapter 'classification'.*valid: retrieval, text-matching, code"):
        mmsearch.load_encoder(str(jina["repo"]["legacy"]), adapter="classification", device="cpu")


def test_custom_classes_without_adapters_folder_is_an_error(jina, tmp_path):
    broken = tmp_path / "no-adapters"
    shutil.copytree(jina["repo"]["legacy"], broken)
    shutil.rmtree(broken / "adapters")
    with pytest.raises(ModelLoadError, match="no adapters/adapter_config.json"):
        describe_checkpoint(str(broken))
    # one task merged into stock weights (the vLLM repos): a plain Qwen2.5-VL, even with a stale auto_map
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    (broken / "config.json").write_text(json.dumps(config))
    assert describe_checkpoint(str(broken), family="jina_v4").jina_layout is None


def test_adapter_is_refused_by_families_without_adapters(tiny_dir):
    with pytest.raises(ModelLoadError, match="vlm2vec family has no task adapters"):
        describe_checkpoint(str(tiny_dir("qwen2_vl")), adapter="retrieval")


def test_text_matching_prompt_rule():
    jina = get_recipe("jina_v4")
    assert jina.render("qwen2_5_vl", "candidate", "a dog", None, False) == "Passage: a dog"
    tm = jina.with_adapter("text-matching")
    assert tm.adapter == "text-matching"
    assert tm.render("qwen2_5_vl", "candidate", "a dog", None, False) == "Query: a dog"
    assert tm.render("qwen2_5_vl", "query", "a dog", None, False) == "Query: a dog"
    for task in ("retrieval", "code"):
        assert jina.with_adapter(task).render("qwen2_5_vl", "candidate", "a dog", None, False) == "Passage: a dog"
    with pytest.raises(ModelLoadError, match="valid: retrieval, text-matching, code"):
        jina.with_adapter("clustering")


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("task", TASKS)
def test_encode_matches_oracle_per_task(task, jina, oracle, encoder):
    enc, o = encoder(task), oracle(task)
    assert enc.family == "jina_v4" and enc.recipe.adapter == task
    assert not any(m.split(".")[0] + ".py" in CUSTOM_CODE for m in sys.modules)  # the authors' code never ran
    bad = {}
    for side in ("query", "candidate"):
        got = _vectors(enc, TEXTS + IMAGES, side)
        for name, vec in got.items():
            c = _cos(vec, _expected(o, name, side, task))
            print(f"jina {task:13s} {side:9s} {name:10s} cos={c:.8f}")
            if c < PARITY:
                bad[(side, name)] = round(c, 6)
    assert not bad, f"{task}: cosine < {PARITY} against the oracle: {bad}"


def test_transformers5_key_names_load_the_same(jina, oracle, encoder):
    enc, o = encoder("retrieval", "v5"), oracle("retrieval")
    for name, vec in _vectors(enc, TEXTS + IMAGES, "candidate").items():
        assert _cos(vec, _expected(o, name, "candidate", "retrieval")) >= PARITY, name


def test_default_adapter_is_retrieval(jina, encoder):
    default, retrieval = encoder(None), encoder("retrieval")
    assert default.recipe.adapter == "retrieval" and default.fingerprint == retrieval.fingerprint
    a, b = _vectors(default, TEXTS + IMAGES, "query"), _vectors(retrieval, TEXTS + IMAGES, "query")
    assert all(_cos(a[n], b[n]) > 1 - 1e-9 for n in a)


def test_each_task_has_its_own_fingerprint(encoder):
    prints = {encoder(t).fingerprint for t in TASKS}
    assert len(prints) == len(TASKS)


# ----------------------------------------------------------------------------- planted wrong rules

PLANTED = {
    # what the wrong rule does -> oracle(task, scaling) it embeds with
    "no adapter merged": (None, SCALING),
    "text-matching's adapter": ("text-matching", SCALING),
    "code's adapter": ("code", SCALING),
    "scaling 1 (alpha ignored)": ("retrieval", 1.0),
    "scaling alpha/sqrt(r) (rslora)": ("retrieval", ALPHA / np.sqrt(R)),
}


@pytest.mark.parametrize("planted", PLANTED)
def test_planted_wrong_rule_is_detected(planted, oracle, encoder):
    """Each wrong way to build the retrieval model moves every text and image below parity."""
    enc = encoder("retrieval")
    wrong = oracle(*PLANTED[planted])
    for side in ("query", "candidate"):
        for name, vec in _vectors(enc, TEXTS + IMAGES, side).items():
            c = _cos(vec, _expected(wrong, name, side, "retrieval"))
            print(f"planted {planted:31s} {side:9s} {name:10s} cos={c:.6f}")
            assert c < PARITY, f"planted rule {planted!r} not detected on {side} {name} (cos {c:.6f})"


def test_planted_passage_prefix_under_text_matching_is_detected(oracle, encoder):
    enc, o = encoder("text-matching"), oracle("text-matching")
    for name, vec in _vectors(enc, TEXTS, "candidate").items():
        c = _cos(vec, o(CASES[name][0], None, None, "candidate"))  # "Passage: " as under retrieval
        print(f"planted text-matching with Passage prefix {name:10s} cos={c:.6f}")
        assert c < PARITY


def test_merged_folder_takes_the_adapter_prompt_rule(jina, oracle):
    """A folder with the task already merged (jina-embeddings-v4-vllm-text-matching) names its
    task to get its prompt rule; nothing is merged."""
    enc = mmsearch.load_encoder(str(jina["plain"]), family="jina_v4", adapter="text-matching", device="cpu")
    plain = mmsearch.load_encoder(str(jina["plain"]), family="jina_v4", device="cpu")
    assert enc.fingerprint != plain.fingerprint and plain.recipe.adapter is None
    o = oracle(None)
    for name, vec in _vectors(enc, TEXTS, "candidate").items():
        assert _cos(vec, o(CASES[name][0], None, None, "query")) >= PARITY
