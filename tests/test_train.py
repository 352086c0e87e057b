"""The trainer: loss, GradCache, learning, resume, mining, export, data, CLI.

Tiny models (tests/conftest.py) and a tiny dataset of flat-colour images with
captions, edits and questions written here in the MMEB-train layout.
"""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmsearch
from mmsearch.errors import InputError
from mmsearch.indexer.compact_plan import matryoshka_sizes
from mmsearch.train import LoraSettings, MiningSettings, ScratchSettings, TrainSettings, train
from mmsearch.train.data import Side, normalise_text, read_train_data
from mmsearch.train.distill import Distiller, Targets
from mmsearch.train.gradcache import _in_order, contrastive_backward, prepare
from mmsearch.train.loss import Temperature, false_negative_mask, info_nce
from mmsearch.train.mining import Miner
from mmsearch.train.model import build_model
from mmsearch.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and two OpenMP threads stall badly when
    other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20),
           "black": (10, 10, 10), "white": (245, 245, 245), "purple": (140, 30, 160), "orange": (250, 140, 0)}
IMAGE_CAND = "<|image_1|>\nRepresent the given image.\n"


def _t2i(c):
    return {"qry": f"Find an image that matches the given caption. A {c} picture.\n", "qry_image_path": "",
            "pos_text": IMAGE_CAND, "pos_image_path": f"img/{c}.png"}


def _edit(a, b):
    return {"qry": f"<|image_1|>\nGiven an image, find a similar image with the described changes. Make it {b}.\n",
            "qry_image_path": f"img/{a}.png", "pos_text": IMAGE_CAND, "pos_image_path": f"img/{b}.png",
            "neg_text": IMAGE_CAND, "neg_image_path": f"img/{a}.png"}


def _i2t(c):
    return {"qry": "<|image_1|>\nFind a caption describing the given image.\n", "qry_image_path": f"img/{c}.png",
            "pos_text": f"A {c} picture.", "pos_image_path": ""}


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    (root / "img").mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(root / "img" / f"{name}.png")
    names = list(COLOURS)
    _write_jsonl(root / "t2i.jsonl", [_t2i(c) for c in names])
    mixed = [_t2i(c) for c in names] + [_edit(a, b) for a, b in zip(names, names[1:] + names[:1])][:5] \
        + [_i2t(c) for c in names[:5]]
    _write_jsonl(root / "mixed.jsonl", mixed)
    return root


def _settings(tmp_path, tiny, **kw):
    base = dict(data=(str(kw.pop("data")),), out=str(tmp_path / kw.pop("name", "run")), model=str(tiny),
                batch_size=4, max_steps=4, lr=1e-3, log_every=2)
    base.update(kw)
    return TrainSettings(**base)


# --------------------------------------------------------------------------- loss


def test_info_nce_equals_hand_computation():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(3, 5))
    c = rng.normal(size=(5, 5))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    tau = 0.02
    expected = np.mean([np.log(np.exp(q[i] @ c.T / tau).sum()) - q[i] @ c[i] / tau for i in range(3)])
    temp = Temperature(tau, learnable=False)
    got = info_nce(torch.tensor(q, dtype=torch.float64), torch.tensor(c, dtype=torch.float64),
                   temp.scale().double())
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a duplicate of query 0's positive among the candidates is not a negative
    keys = ["a", "b", "c", "a", "d"]
    mask = false_negative_mask(keys[:3], keys)
    assert mask.tolist()[0] == [False, False, False, True, False] and not mask[1:].any()
    keep = [0, 1, 2, 4]
    s = q[0] @ c[keep].T / tau
    got0 = info_nce(torch.tensor(q[:1]), torch.tensor(c), torch.tensor(1 / tau, dtype=torch.float64), mask[:1])
    assert got0.item() == pytest.approx(np.log(np.exp(s).sum()) - s[0], rel=1e-6)
    assert false_negative_mask(["a", "b"], ["a", "b", "c"]) is None


def test_learnable_temperature_is_log_parameterised():
    temp = Temperature(0.05, learnable=True)
    assert temp.value == pytest.approx(0.05) and temp.log_tau.requires_grad
    (temp.scale() * 2).backward()
    assert temp.log_tau.grad is not None and temp.log_tau.grad.item() == pytest.approx(-2 / 0.05, rel=1e-5)
    assert not Temperature(0.02, learnable=False).log_tau.requires_grad


# --------------------------------------------------------------------------- GradCache


def _batch(data_dir, tiny):
    data = read_train_data([str(data_dir / "mixed.jsonl")])
    from mmsearch.train.batches import BatchBuilder, ImageCache

    builder = BatchBuilder(data.examples, ImageCache(1 << 20, None), data_negatives=True)
    return builder.build([0, 9, 14, 3, 17], np.random.default_rng(0))  # t2i, edits (with negatives), i2t


def _grads(model, temp):
    params = {n: p for n, p in model.trainable().items()}
    out = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    out["log_tau"] = temp.log_tau.grad.detach().clone()
    for p in list(params.values()) + [temp.log_tau]:
        p.grad = None
    return out


def _assert_grads_close(got, want, name):
    """Equal up to float32 summation order (sub-batches pad and sum in another order)."""
    scale = float(want.abs().max()) or 1.0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_gradcache_gradients_equal_full_batch(tmp_path, tiny_dir, data_dir, lora):
    tiny = tiny_dir("qwen2_vl")
    settings = _settings(tmp_path, tiny, data=data_dir / "mixed.jsonl", lora=LoraSettings(dropout=0.0) if lora
                         else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(settings, str(tiny))
    temp = Temperature(0.05, learnable=True)
    batch = _batch(data_dir, tiny)
    assert len(batch.candidates) > len(batch.queries)  # the edits' source images are hard negatives

    def loss_fn(q, c):
        return info_nce(q, c, temp.scale())

    full = contrastive_backward(model.encoder, batch.queries, batch.candidates, loss_fn, None)
    g_full = _grads(model, temp)
    cached = contrastive_backward(model.encoder, batch.queries, batch.candidates, loss_fn, 2)
    g_cached = _grads(model, temp)
    assert cached.item() == pytest.approx(full.item(), rel=1e-5)
    assert set(g_full) == set(g_cached) and len(g_full) > 2
    for name in g_full:
        _assert_grads_close(g_cached[name], g_full[name], name)


def test_gradcache_replays_dropout(tmp_path, tiny_dir, data_dir):
    """With dropout on, the re-run sub-batches draw the masks of the first pass:
    gradients equal those of a chunked forward with autograd from the same RNG state."""
    tiny = tiny_dir("qwen2_vl")
    model = build_model(_settings(tmp_path, tiny, data=data_dir / "mixed.jsonl", lora=LoraSettings(dropout=0.5)),
                        str(tiny))
    temp = Temperature(0.05, learnable=False)
    temp.log_tau.requires_grad_(True)
    batch = _batch(data_dir, tiny)

    def loss_fn(q, c):
        return info_nce(q, c, temp.scale())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        contrastive_backward(model.encoder, batch.queries, batch.candidates, loss_fn, 2)
    g_cached = _grads(model, temp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        qparts, cparts = prepare(model.encoder, batch.queries, 2), prepare(model.encoder, batch.candidates, 2)
        q = _in_order(qparts, [model.encoder.embed(x) for _, x in qparts])
        c = _in_order(cparts, [model.encoder.embed(x) for _, x in cparts])
        loss_fn(q, c).backward()
    g_ref = _grads(model, temp)
    for name in g_ref:
        _assert_grads_close(g_cached[name], g_ref[name], name)


# --------------------------------------------------------------------------- training


def _pair_loss(encoder, data_dir, tau=0.05):
    data = read_train_data([str(data_dir / "t2i.jsonl")])
    q = encoder.encode([mmsearch.Item(id=str(i), text=e.query.text) for i, e in enumerate(data.examples)])
    c = encoder.encode([mmsearch.Item(id=str(i), text=e.positive.text, image=e.positive.image)
                        for i, e in enumerate(data.examples)])
    return float(info_nce(torch.tensor(q), torch.tensor(c), torch.tensor(1 / tau))), (q @ c.T).argmax(1)


def test_a_few_steps_lower_the_loss_and_the_output_loads(tmp_path, tiny_dir, data_dir):
    tiny = tiny_dir("qwen2_vl")
    settings = _settings(tmp_path, tiny, data=data_dir / "t2i.jsonl", batch_size=8, max_steps=30, log_every=10,
                         temperature=0.05, learn_temperature=True, warmup=0)
    trainer = Trainer(settings)
    before, _ = _pair_loss(trainer.encoder, data_dir)
    result = trainer.run()
    after, top1 = _pair_loss(trainer.encoder, data_dir)
    assert after < 0.25 * before, (before, after)
    assert (top1 == np.arange(8)).mean() >= 0.75
    assert result.steps == 30 and result.examples == 8 and result.temperature != 0.05
    log = [json.loads(line) for line in (Path(settings.out) / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30] and log[-1]["loss"] < log[0]["loss"]
    assert all(r["seq_per_s"] > 0 and r["lr"] >= 0 for r in log)
    # the exported checkpoint embeds exactly like the model the trainer holds
    loaded = mmsearch.load_encoder(settings.out, device="cpu")
    items = [mmsearch.Item(id="a", text="A red picture."), mmsearch.Item(id="b", image=str(data_dir / "img/red.png"))]
    np.testing.assert_allclose(loaded.encode(items), trainer.encoder.encode(items), atol=1e-5)
    card = json.loads((Path(settings.out) / "mmsearch_train.json").read_text())
    assert card["result"]["steps"] == 30


def test_matryoshka_export_records_its_sizes_and_loads_truncated(tmp_path, tiny_dir, data_dir):
    """A model trained with the MRL loss can be loaded at the sizes it was trained for (its
    config's matryoshka_dims, as jina-v4 names its own); other sizes, and any size of a model
    trained without the loss, are refused."""
    tiny = tiny_dir("qwen2_vl")
    settings = _settings(tmp_path, tiny, data=data_dir / "t2i.jsonl", max_steps=2, matryoshka=(16, 32))
    Trainer(settings).run()
    full = mmsearch.load_encoder(settings.out, device="cpu")
    small = mmsearch.load_encoder(settings.out, device="cpu", dim=16)
    assert json.loads((Path(settings.out) / "config.json").read_text())["matryoshka_dims"] == [16, 32]
    items = [mmsearch.Item(id="a", text="A red picture."), mmsearch.Item(id="b", image=str(data_dir / "img/red.png"))]
    x, y = full.encode(items), small.encode(items)
    expected = x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True)
    assert small.dim == 16 and y.shape == (2, 16)
    assert matryoshka_sizes(full) == (full.dim, 32, 16)  # what an index build may truncate to
    np.testing.assert_allclose(y, expected, atol=1e-5)
    with pytest.raises(mmsearch.errors.ModelLoadError, match="valid: 16, 32"):
        mmsearch.load_encoder(settings.out, device="cpu", dim=24)
    plain = _settings(tmp_path, tiny, data=data_dir / "t2i.jsonl", max_steps=1, name="plain")
    Trainer(plain).run()
    with pytest.raises(mmsearch.errors.ModelLoadError, match="no Matryoshka sizes"):
        mmsearch.load_encoder(plain.out, device="cpu", dim=16)


def test_lora_adapter_export_loads(tmp_path, tiny_dir, data_dir):
    tiny = tiny_dir("qwen2_vl")
    settings = _settings(tmp_path, tiny, data=data_dir / "mixed.jsonl", max_steps=2,
                         lora=LoraSettings(rank=4, dora=True), save_adapter=True, chunk_size=3)
    trainer = Trainer(settings)
    trainer.run()
    out = Path(settings.out)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    loaded = mmsearch.load_encoder(out, device="cpu")
    items = [mmsearch.Item(id="a", text="A blue picture."), mmsearch.Item(id="b", image=str(data_dir / "img/blue.png"))]
    np.testing.assert_allclose(loaded.encode(items), trainer.encoder.encode(items), atol=1e-5)
    # a new run into the same folder replaces the export (no stale adapter beside merged weights)
    train(dataclasses.replace(settings, save_adapter=False, lora=None, max_steps=1))
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_frozen_parameters_stay_fixed_and_the_rest_learn(tmp_path, tiny_dir, data_dir):
    tiny = tiny_dir("qwen2_vl")
    frozen = r"^(model\.language_model|lm_head)\."   # teach only the vision tower, as a reading stage does
    settings = _settings(tmp_path, tiny, data=data_dir / "mixed.jsonl", max_steps=3, freeze=frozen)
    train(settings)
    before, after = _weights(Path(tiny)), _weights(Path(settings.out))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    # the saved names drop the "model." prefix of the vision tower; everything else is the language model
    assert changed and all("visual." in n for n in changed), sorted(changed)[:3]
    assert any("visual.merger." in n for n in changed) and any("visual.blocks." in n for n in changed)
    with pytest.raises(InputError, match="matches 0 of the"):
        build_model(dataclasses.replace(settings, freeze="^no_such_module"), str(tiny))
    with pytest.raises(InputError, match="leave some"):
        build_model(dataclasses.replace(settings, freeze="."), str(tiny))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resumed_run_equals_uninterrupted(tmp_path, tiny_dir, data_dir):
    tiny = tiny_dir("qwen2_vl")
    kw = dict(data=data_dir / "mixed.jsonl", max_steps=6, save_every=2, lora=LoraSettings(dropout=0.1),
              chunk_size=3, grad_accum=2, learn_temperature=True, mining=MiningSettings(every=3, k=3),
              distill_from=str(tiny), distill_weight=5.0)
    train(_settings(tmp_path, tiny, name="straight", **kw))
    straight = tmp_path / "straight"
    # an interrupted copy: as if killed right after the step-4 checkpoint
    cut = tmp_path / "cut"
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000006")
    (cut / "model.safetensors").unlink()
    with pytest.raises(InputError, match="resume"):
        train(_settings(tmp_path, tiny, name="cut", **kw))
    result = train(_settings(tmp_path, tiny, name="cut", resume=True, **kw))
    assert result.steps == 6
    a, b = _weights(straight), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    log_a = [{k: v for k, v in json.loads(x).items() if k not in ("seq_per_s", "seconds")}
             for x in (straight / "train_log.jsonl").read_text().splitlines()]
    log_b = [{k: v for k, v in json.loads(x).items() if k not in ("seq_per_s", "seconds")}
             for x in (cut / "train_log.jsonl").read_text().splitlines()]
    assert log_a == log_b


def test_random_init_from_a_models_config(tmp_path, tiny_dir, data_dir):
    tiny = tiny_dir("qwen2_vl")
    settings = _settings(tmp_path, tiny, data=data_dir / "t2i.jsonl", init="config", max_steps=1, seed=5)
    train(settings)
    init, base = _weights(Path(settings.out) / "init"), _weights(tiny)
    assert init.keys() == base.keys()
    assert not all(torch.equal(init[k], base[k]) for k in base if k.endswith("q_proj.weight"))
    assert mmsearch.load_encoder(settings.out, device="cpu").dim == 64


def test_scratch_model_trains_and_loads(tmp_path, data_dir):
    spec = ScratchSettings(hidden=32, layers=1, heads=2, kv_heads=1, ffn=64, vision_embed=16, vision_depth=1,
                           vision_heads=1, vocab_size=320, image_size=56)
    settings = TrainSettings(data=(str(data_dir / "mixed.jsonl"),), out=str(tmp_path / "s"), scratch=spec,
                             batch_size=4, max_steps=2, lr=1e-3)
    train(settings)
    enc = mmsearch.load_encoder(settings.out, device="cpu")
    assert enc.dim == 32 and len(enc.processor.tokenizer) <= 320
    assert enc.encode(["A red picture."]).shape == (1, 32)


def test_scratch_sizes_are_defined_once_and_default_to_the_shipped_model():
    from mmsearch.models import QwenSize

    assert issubclass(ScratchSettings, QwenSize)  # the sizes and their defaults: one definition
    shipped = Path(mmsearch.__file__).parent / "models" / "tiny"
    config = json.loads((shipped / "config.json").read_text())
    text, vision, s = config["text_config"], config["vision_config"], ScratchSettings()
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"], text["num_key_value_heads"],
            text["intermediate_size"], text["vocab_size"]) == (s.hidden, s.layers, s.heads, s.kv_heads, s.ffn,
                                                                s.vocab_size)
    assert (vision["embed_dim"], vision["depth"], vision["num_heads"]) == (s.vision_embed, s.vision_depth,
                                                                           s.vision_heads)
    assert json.loads((shipped / "preprocessor_config.json").read_text())["max_pixels"] == s.image_size ** 2
    with pytest.raises(InputError, match="hidden must be divisible by heads"):
        ScratchSettings(hidden=100)
    with pytest.raises(InputError, match="vocab_size=0"):
        ScratchSettings(vocab_size=0)


def test_vocab_data_trains_the_scratch_tokenizer_on_more_tables(tmp_path, data_dir):
    # a word only the extra table uses becomes one token; without the table it stays split
    extra = _write_jsonl(tmp_path / "later.jsonl", [{"qry": "zorblax " * 20, "pos_text": "zorblax"}] * 30)
    spec = ScratchSettings(hidden=32, layers=1, heads=2, kv_heads=1, ffn=64, vision_embed=16, vision_depth=1,
                           vision_heads=1, vocab_size=320, image_size=56)
    pieces = {}
    for name, vocab_data in (("with", (str(extra),)), ("without", ())):
        settings = TrainSettings(data=(str(data_dir / "mixed.jsonl"),), out=str(tmp_path / name), scratch=spec,
                                 vocab_data=vocab_data, batch_size=4, max_steps=1, lr=1e-3)
        train(settings)
        tokenizer = mmsearch.load_encoder(settings.out, device="cpu").processor.tokenizer
        pieces[name] = len(tokenizer(" zorblax", add_special_tokens=False)["input_ids"])
    assert pieces["with"] == 1 < pieces["without"]
    with pytest.raises(InputError, match="--vocab-data"):
        TrainSettings(data=(str(extra),), out=str(tmp_path / "x"), model="m", vocab_data=(str(extra),))


# --------------------------------------------------------------------------- mining


def _qa_rows():
    # text -> text: the query is its own positive's text, so the positive is the top hit
    return [{"qry": f"A {c} picture.", "pos_text": f"A {c} picture."} for c in COLOURS] + \
        [{"qry": f"The colour {c}.", "pos_text": f"A {c} picture."} for c in list(COLOURS)[:3]]


def test_mined_negatives_never_include_positives(tmp_path, tiny_encoder):
    path = _write_jsonl(tmp_path / "qa.jsonl", _qa_rows())
    data = read_train_data([str(path)])
    enc = tiny_encoder("qwen2_vl")
    miner = Miner.create(MiningSettings(k=4, per_query=2), data.examples, data.candidates(), tmp_path / "mine")
    from mmsearch.train.batches import BatchBuilder, ImageCache

    request = BatchBuilder(data.examples, ImageCache(0, None), True).request
    record = miner.refresh(enc, request, step=0)
    assert record["pool"] == len(COLOURS) and record["negatives_per_query"] == 4
    for i, ex in enumerate(data.examples):
        mined = [miner.pool[j] for j in miner.table[i] if j >= 0]
        assert ex.positive not in mined and ex.query not in mined and len(set(mined)) == len(mined)
        for s in range(5):
            drawn = miner.sample(i, np.random.default_rng(s))
            assert len(drawn) == 2 and ex.positive not in drawn
    # the same from an existing mmsearch index of the candidates (its own ids, another order)
    _write_jsonl(tmp_path / "pool.jsonl", [{"id": f"c{j}", "text": s.text} for j, s in
                                           reversed(list(enumerate(data.candidates())))])
    mmsearch.build_index(tmp_path / "pool.jsonl", tmp_path / "index", encoder=enc, index="Flat", instruction="")
    from_index = Miner.create(MiningSettings(source=str(tmp_path / "index"), k=4), data.examples, [], tmp_path / "m2")
    from_index.refresh(enc, request, step=0)
    assert not (tmp_path / "m2").exists()  # searched the given index directly (same weights)
    assert from_index.item_ids == [f"c{j}" for j in range(len(COLOURS))][::-1]
    got = [[from_index.pool[j] for j in row] for row in from_index.table]
    assert got == [[miner.pool[j] for j in row] for row in miner.table]


# --------------------------------------------------------------------------- data


def test_mmeb_strings_are_normalised_to_the_encoder_format(tiny_encoder, data_dir):
    enc = tiny_encoder("qwen2_vl")
    data = read_train_data([str(data_dir / "mixed.jsonl")])
    edit = data.examples[8]
    assert edit.query.text == "Given an image, find a similar image with the described changes. Make it green."
    assert edit.positive == Side("Represent the given image.", str((data_dir / "img/green.png").resolve()))
    assert edit.negative == Side("Represent the given image.", str((data_dir / "img/red.png").resolve()))
    from mmsearch.encoders import Request
    from mmsearch.train.batches import side_request

    fmt = enc.format(side_request(edit.positive, Image.new("RGB", (56, 56))))
    assert fmt == "<|image_pad|> Represent the given image."
    assert fmt == enc.format(Request(text=None, image=Image.new("RGB", (56, 56)),
                                     instruction="Represent the given image."))
    assert normalise_text("<|image_pad|> x\n", True, "qry") == "x"
    assert normalise_text("Find it.\n", False, "qry") == "Find it."


def test_bad_rows_are_counted_and_skipped(tmp_path, data_dir):
    good = _t2i("red")
    rows = [good, "{not json", {"qry": "x"}, dict(good, pos_image_path="img/missing.png"),
            dict(good, qry="<|image_1|>\nno image here"), dict(good, qry="<|image_1|><|image_2|> two"),
            {"qry": "", "pos_text": "y"}, [1, 2]]
    path = _write_jsonl(data_dir / "bad.jsonl", [r if isinstance(r, (dict, str)) else json.dumps(r) for r in rows])
    data = read_train_data([str(path)])
    assert len(data.examples) == 1 and len(data.rejected) == 7
    assert data.skipped == {"invalid JSON": 1, "missing fields": 1, "image file not found": 1,
                            "image placeholder without an image path": 1, "several image placeholders": 1,
                            "empty query": 1, "not a JSON object": 1}
    assert [r["row"] for r in data.rejected] == [2, 3, 4, 5, 6, 7, 8]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([_t2i(c) for c in COLOURS]), data_dir / "t2i.parquet")
    assert len(read_train_data([str(data_dir / "t2i.parquet")]).examples) == len(COLOURS)
    nested = data_dir / "tables" / "t2i.jsonl"
    nested.parent.mkdir(exist_ok=True)
    shutil.copy(data_dir / "t2i.jsonl", nested)
    with pytest.raises(InputError, match="image file not found"):  # paths are relative to the table's folder
        read_train_data([str(nested)])
    assert len(read_train_data([str(nested)], image_root=str(data_dir)).examples) == len(COLOURS)
    with pytest.raises(InputError, match="unsupported file type"):
        read_train_data([str(data_dir / "img/red.png")])
    with pytest.raises(InputError, match="no usable training rows"):
        read_train_data([str(_write_jsonl(tmp_path / "none.jsonl", ["{}"]))])


def test_settings_reject_bad_values(tmp_path):
    ok = dict(data=("t.jsonl",), out=str(tmp_path), model="m")
    for bad, match in [(dict(batch_size=0), "batch_size"), (dict(schedule="step"), "valid: cosine"),
                       (dict(model=None), "exactly one"), (dict(save_adapter=True), "needs LoRA"),
                       (dict(temperature=-1), "temperature"), (dict(precision="fp8"), "valid: auto"),
                       (dict(freeze="(unclosed"), "not a valid regular expression")]:
        with pytest.raises(InputError, match=match):
            TrainSettings(**{**ok, **bad})
    with pytest.raises(InputError, match="larger than mine_k"):
        MiningSettings(k=2, per_query=3)


def test_per_dataset_batches_hold_one_dataset_each():
    from mmsearch.train.batches import DataOrder

    groups = ["a"] * 10 + ["b"] * 7 + ["c"] * 2           # "c" is smaller than a batch: left out
    order = DataOrder(len(groups), 3, seed=5, groups=groups)
    assert order.per_epoch == 3 + 2
    epochs = []
    for e in range(2):
        batches = [order.batch(e * order.per_epoch + b) for b in range(order.per_epoch)]
        assert all(epoch == e for epoch, _ in batches)
        seen = np.concatenate([idx for _, idx in batches])
        assert len(set(seen.tolist())) == len(seen) == 15 and max(seen) < 17
        assert all(len({groups[i] for i in idx}) == 1 for _, idx in batches)
        assert sorted(groups[idx[0]] for _, idx in batches) == ["a", "a", "a", "b", "b"]
        epochs.append([idx.tolist() for _, idx in batches])
    assert epochs[0] != epochs[1]
    assert DataOrder(len(groups), 3, seed=5, groups=groups).batch(4)[1].tolist() == epochs[0][4]  # a pure function
    plain = DataOrder(17, 3, seed=5)   # without groups: the permutation of the module docstring, unchanged
    assert plain.batch(7)[1].tolist() == np.random.default_rng([5, 1]).permutation(17)[6:9].tolist()  # epoch 1, batch 2
    with pytest.raises(InputError, match="every dataset has fewer than batch_size=11"):
        DataOrder(len(groups), 11, seed=5, groups=groups)


def test_trainer_per_dataset_batches_group_by_dataset_column_else_table(tmp_path, tiny_dir, data_dir):
    tagged = [dict(_t2i(c), dataset="Colours") for c in COLOURS] + [dict(_i2t(c), dataset="Captions") for c in COLOURS]
    both = _write_jsonl(data_dir / "tagged.jsonl", tagged)
    s = _settings(tmp_path, tiny_dir("qwen2_vl"), data=both, batch_size=4, per_dataset_batches=True)
    s = dataclasses.replace(s, data=(str(both), str(data_dir / "t2i.jsonl")))
    trainer = Trainer(s)
    names = [ex.dataset for ex in trainer.data.examples]
    assert names == ["Colours"] * 8 + ["Captions"] * 8 + [str(data_dir / "t2i.jsonl")] * 8
    assert trainer.order.per_epoch == 6
    assert all(len({names[i] for i in trainer.order.batch(m)[1]}) == 1 for m in range(12))
    result = trainer.run()
    assert result.steps == 4 and np.isfinite(result.final_loss)


# --------------------------------------------------------------------------- distillation


def test_distillation_term_equals_hand_computation():
    rng = np.random.default_rng(4)

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    q, c = unit(rng.normal(size=(3, 6))), unit(rng.normal(size=(5, 6)))
    tq, tc = unit(rng.normal(size=(2, 6))), unit(rng.normal(size=(2, 6)))
    distiller = Distiller(teacher=None, weight=3.0, chosen=[True, False, True])
    got = distiller.loss(torch.tensor(q), torch.tensor(c), Targets(torch.tensor([0, 2]), torch.tensor(tq),
                                                                   torch.tensor(tc)))
    expected = 3.0 * np.mean([1 - q[0] @ tq[0], 1 - q[2] @ tq[1], 1 - c[0] @ tc[0], 1 - c[2] @ tc[1]])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert distiller.flush() == pytest.approx(expected, rel=1e-5) and distiller.flush() is None


def _drift(encoder, teacher, data_dir):
    """Mean cosine between the two models' embeddings of the t2i table's queries and positives."""
    data = read_train_data([str(data_dir / "t2i.jsonl")])
    sides = [ex.query for ex in data.examples] + [ex.positive for ex in data.examples]
    items = [mmsearch.Item(id=str(i), text=s.text, image=s.image) for i, s in enumerate(sides)]
    return float(np.mean(np.sum(encoder.encode(items) * teacher.encode(items), axis=1)))


def test_distillation_keeps_the_teachers_embeddings_of_the_chosen_tables(tmp_path, tiny_dir, tiny_encoder, data_dir):
    tiny, teacher = tiny_dir("qwen2_vl"), tiny_encoder("qwen2_vl")
    tables = (str(data_dir / "t2i.jsonl"), str(data_dir / "mixed.jsonl"))
    kw = dict(data=tables[0], batch_size=6, max_steps=12, lr=3e-4, warmup=3, chunk_size=4)
    plain = Trainer(dataclasses.replace(_settings(tmp_path, tiny, name="plain", **kw), data=tables))
    plain.run()
    s = _settings(tmp_path, tiny, name="distilled", distill_from=str(tiny), distill_weight=100.0, **kw)
    kept = Trainer(dataclasses.replace(s, data=tables, distill_data=(tables[0],)))
    assert kept.distiller.chosen.tolist() == [True] * 8 + [False] * 18   # t2i's 8 rows, not mixed's 18
    kept.run()
    moved, held = _drift(plain.encoder, teacher, data_dir), _drift(kept.encoder, teacher, data_dir)
    assert held > 0.95 and 1 - held < (1 - moved) / 2.5, (moved, held)   # measured: 0.964 against 0.883
    log = [json.loads(x) for x in (tmp_path / "distilled" / "train_log.jsonl").read_text().splitlines()]
    terms = [r["distill"] for r in log if r["distill"] is not None]
    assert terms and min(terms) >= 0 and max(terms) > 0


def test_distillation_settings_are_checked(tmp_path, tiny_dir, data_dir):
    ok = dict(data=("a.jsonl", "b.jsonl"), out=str(tmp_path), model="m")
    for bad, match in [(dict(distill_data=("a.jsonl",)), "needs a teacher"),
                       (dict(distill_from="t", distill_data=("c.jsonl",)), "not training tables"),
                       (dict(distill_from="t", objective="generate"), "needs objective contrastive"),
                       (dict(distill_from="t", distill_weight=0), "distill_weight")]:
        with pytest.raises(InputError, match=match):
            TrainSettings(**{**ok, **bad})
    assert TrainSettings(**ok, distill_from="t", distill_data=("./a.jsonl",)).distill_data == ("./a.jsonl",)
    from mmsearch.testing import TEST_SIZE, build_tiny_model

    wide = build_tiny_model("qwen2_vl", tmp_path / "wide", size=dataclasses.replace(TEST_SIZE, hidden=96, ffn=192))
    s = _settings(tmp_path, tiny_dir("qwen2_vl"), data=data_dir / "t2i.jsonl", distill_from=str(wide))
    with pytest.raises(InputError, match="embeds in 96 dimensions, the model being trained in 64"):
        Trainer(s)


# --------------------------------------------------------------------------- CLI


def test_cli_trains_and_reports(tmp_path, tiny_dir, data_dir, capsys):
    import argparse

    from mmsearch.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["train", "--data", str(data_dir / "t2i.jsonl"), "--model", str(tiny_dir("qwen2_vl")),
                              "--out", str(out), "--batch-size", "4", "--max-steps", "2", "--lora", "--lora-rank",
                              "2", "--mine-negatives", "auto", "--chunk-size", "2", "--no-progress", "--json",
                              "--distill-from", str(tiny_dir("qwen2_vl")), "--distill-weight", "3",
                              "--distill-data", str(data_dir / "t2i.jsonl")])
    assert args.handler(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and Path(result["out"]) == out
    settings = json.loads((out / "mmsearch_train.json").read_text())["settings"]
    assert settings["distill_weight"] == 3 and settings["distill_data"] == [str(data_dir / "t2i.jsonl")]
    assert mmsearch.load_encoder(out, device="cpu").dim == 64
    sizes = train_cmd.parse_sizes("hidden=96,layers=2")
    assert sizes == {"hidden": 96, "layers": 2}
    with pytest.raises(InputError, match="NAME=INT"):
        train_cmd.parse_sizes("depth=3")


# --------------------------------------------------------------------------- fast pixels


def test_numpy_qwen_pixels_equal_the_pil_processor(tiny_dir, tiny_encoder):
    from transformers import AutoImageProcessor, Qwen2VLImageProcessorPil

    from mmsearch.encoders.qwen_pixels import NumpyQwen2VLImageProcessor, faster

    stock = AutoImageProcessor.from_pretrained(str(tiny_dir("qwen2_vl")))
    assert type(stock) is Qwen2VLImageProcessorPil
    fast = faster(stock)
    assert isinstance(fast, NumpyQwen2VLImageProcessor) and fast.size == stock.size
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(112, 112), (56, 56), (57, 99), (30, 200), (300, 41), (112, 84)]]
    images += [Image.fromarray(rng.integers(0, 256, (80, 90), dtype=np.uint8)),
               Image.fromarray(rng.integers(0, 256, (70, 70, 4), dtype=np.uint8), "RGBA")]
    for batch in (images, images[:1]):
        want, got = stock(batch, return_tensors="np"), fast(batch, return_tensors="np")
        assert np.array_equal(got["pixel_values"], want["pixel_values"])  # bit for bit
        assert np.array_equal(got["image_grid_thw"], want["image_grid_thw"])
    # the encoders use it when torchvision is absent (the stock processor otherwise)
    from mmsearch.encoders.processors import torchvision_available

    proc = tiny_encoder("qwen2_vl").processor.image_processor
    assert isinstance(proc, NumpyQwen2VLImageProcessor) != torchvision_available()
