"""The generative objective (`--objective generate`): next-token prediction of the
positive's text given the query, on tiny offline models."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmsearch.encoders import Request
from mmsearch.errors import InputError
from mmsearch.train import MiningSettings, TrainSettings, train
from mmsearch.train.data import read_train_data
from mmsearch.train.generate import NO_TARGET, generation_backward, generation_data, generation_inputs
from mmsearch.train.model import build_model
from mmsearch.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20),
           "black": (10, 10, 10), "white": (245, 245, 245)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _read_row(c):
    return {"qry": "<|image_1|>\nRead the page.\n", "qry_image_path": f"img/{c}.png", "pos_text": f"a {c} page",
            "pos_image_path": ""}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate-data")
    (root / "img").mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(root / "img" / f"{name}.png")
    rows = [_read_row(c) for c in COLOURS] + [
        # a text-only query (answers need no image) and a row without a positive text (skipped)
        {"qry": "What colour is the sky?", "qry_image_path": "", "pos_text": "blue", "pos_image_path": ""},
        {"qry": "A red picture.", "qry_image_path": "", "pos_text": "<|image_1|>", "pos_image_path": "img/red.png"}]
    (root / "read.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _settings(tmp_path, tiny, data_dir, **kw):
    base = dict(data=(str(data_dir / "read.jsonl"),), out=str(tmp_path / kw.pop("name", "run")), model=str(tiny),
                objective="generate", batch_size=4, max_steps=4, lr=1e-3, log_every=2)
    base.update(kw)
    return TrainSettings(**base)


def _examples(data_dir):
    data = generation_data(read_train_data([str(data_dir / "read.jsonl")], negatives=False))
    image = lambda side: Image.open(side.image).convert("RGB") if side.image else None  # noqa: E731
    queries = [Request(text=e.query.text, image=image(e.query), instruction=None) for e in data.examples]
    return data, queries, [e.positive.text for e in data.examples]


def _hand_loss(model, encoder, query, target):
    """Summed target-token NLL and token count of one row, from its own unpadded forward."""
    prompt = encoder.format(query)
    full = encoder.model_inputs([Request(text=None, image=query.image, instruction=None,
                                         prompt=f"{prompt} {target}")])
    tokenizer = encoder.processor.tokenizer
    n = len(tokenizer(" " + target, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(**full).logits[0].float()
    ids = full["input_ids"][0]
    logp = torch.log_softmax(logits[-n - 1:-1], dim=-1)   # position t predicts token t + 1
    return float(-logp[torch.arange(n), ids[-n:]].sum()), n


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_generative_loss_equals_hand_computation(tiny_dir, tiny_encoder, data_dir, padding_side):
    data, queries, targets = _examples(data_dir)
    assert data.skipped[NO_TARGET] == 1 and len(targets) == 7
    enc = tiny_encoder("qwen2_vl", padding_side)
    batch, labels = generation_inputs(enc, queries, targets)
    with torch.no_grad():
        got = float(enc.model(**batch, labels=labels).loss)
    parts = [_hand_loss(enc.model, enc, q, t) for q, t in zip(queries, targets)]
    want = sum(s for s, _ in parts) / sum(n for _, n in parts)
    assert got == pytest.approx(want, rel=1e-5)
    assert int((labels != -100).sum()) == sum(n for _, n in parts)


def test_sub_batches_give_the_whole_batch_gradient(tmp_path, tiny_dir, tiny_encoder, data_dir):
    import contextlib

    _, queries, targets = _examples(data_dir)
    model = build_model(_settings(tmp_path, tiny_dir("qwen2_vl"), data_dir), str(tiny_dir("qwen2_vl")))
    model.eval()  # no dropout, so both passes see the same function
    grads = []
    for chunk in (None, 2):
        loss = generation_backward(model.encoder, queries, targets, chunk, 0.5, contextlib.nullcontext)
        grads.append((loss, {n: p.grad.clone() for n, p in model.trainable().items() if p.grad is not None}))
        for p in model.trainable().values():
            p.grad = None
    (whole, g1), (chunked, g2) = grads
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for name in g1:
        scale = float(g1[name].abs().max()) or 1.0
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_a_few_steps_lower_the_loss_and_contrastive_runs_on_from_it(tmp_path, tiny_dir, tiny_encoder, data_dir):
    import contextlib

    _, queries, targets = _examples(data_dir)
    settings = _settings(tmp_path, tiny_dir("qwen2_vl"), data_dir, batch_size=7, max_steps=30, warmup=0, lr=5e-3,
                         log_every=5)
    trainer = Trainer(settings)

    def loss():
        trainer.model.eval()
        value = generation_backward(trainer.encoder, queries, targets, None, 0.0, contextlib.nullcontext)
        trainer.optimizer.zero_grad(set_to_none=True)
        return value

    before = loss()
    result = trainer.run()
    after = loss()
    assert after < 0.5 * before, (before, after)
    assert result.steps == 30 and result.examples == 7 and result.skipped == 1
    log = [json.loads(x) for x in (Path(settings.out) / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    # the output is an ordinary checkpoint: a contrastive stage starts from it
    follow = TrainSettings(data=(str(data_dir / "read.jsonl"),), out=str(tmp_path / "next"), model=settings.out,
                           batch_size=4, max_steps=1, lr=1e-4)
    assert train(follow).steps == 1


def test_resumed_generative_run_equals_uninterrupted(tmp_path, tiny_dir, data_dir):
    tiny = tiny_dir("qwen2_vl")
    kw = dict(max_steps=4, save_every=2, chunk_size=3, grad_accum=2)
    train(_settings(tmp_path, tiny, data_dir, name="straight", **kw))
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000004")
    (cut / "model.safetensors").unlink()
    # a checkpoint of one objective does not resume the other
    with pytest.raises(InputError, match="objective"):
        train(_settings(tmp_path, tiny, data_dir, name="cut", resume=True, objective="contrastive", **kw))
    assert train(_settings(tmp_path, tiny, data_dir, name="cut", resume=True, **kw)).steps == 4
    from safetensors.torch import load_file

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_generate_settings_and_data_errors(tmp_path, tiny_dir, data_dir):
    tiny = tiny_dir("qwen2_vl")
    with pytest.raises(InputError, match="objective='read'"):
        _settings(tmp_path, tiny, data_dir, objective="read")
    with pytest.raises(InputError, match="mined negatives"):
        _settings(tmp_path, tiny, data_dir, mining=MiningSettings())
    images_only = tmp_path / "images_only.jsonl"
    images_only.write_text(json.dumps({"qry": "A red picture.", "qry_image_path": "", "pos_text": "<|image_1|>",
                                       "pos_image_path": str(data_dir / "img/red.png")}) + "\n")
    with pytest.raises(InputError, match="pos_text"):
        train(_settings(tmp_path, tiny, data_dir, data=(str(images_only),)))


def test_cli_passes_the_objective():
    import argparse

    from mmsearch.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", "t.jsonl", "--scratch", "--out", "o", "--objective", "generate"])
    assert train_cmd.settings_from_args(args).objective == "generate"
    default = parser.parse_args(["train", "--data", "t.jsonl", "--scratch", "--out", "o"])
    assert train_cmd.settings_from_args(default).objective == "contrastive"
