"""The `mmsearch` command: conventions (--help, --version, exit codes, --json) and encode."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mmsearch
from mmsearch.cli import COMMAND_MODULES, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mmsearch", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help_everywhere():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"mmsearch {mmsearch.__version__}"
    for cmd in COMMAND_MODULES:
        h = _run(cmd, "--help")
        assert h.returncode == 0 and f"usage: mmsearch {cmd}" in h.stdout, h.stderr
        v = _run(cmd, "--version")
        assert v.returncode == 0 and mmsearch.__version__ in v.stdout
    assert _run().returncode == 2
    assert _run("no-such-command").returncode == 2


def test_tasks_json(capsys):
    assert main(["tasks", "--json", "--source", "generic"]) == 0
    names = {t["name"] for t in json.loads(capsys.readouterr().out)}
    assert {"t2i", "i2t", "i2i", "t2t", "composed", "vqa", "doc"} <= names


def test_encode_writes_aligned_vectors_and_rejects_bad_rows(tmp_path, tiny_dir, tiny_encoder, capsys):
    Image.new("RGB", (60, 40), (250, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "bad.jpg").write_bytes(b"this is text, not a jpeg")
    rows = [
        '{"id": "t1", "text": "a red square"}',
        '{"id": "i1", "image": "red.png"}',
        '{"id": "b1", "image": "bad.jpg"}',
        '{"id": "it", "text": "red", "image": "red.png", "colour": "red"}',
        '{"id": "t1", "text": "duplicate"}',
        '{broken json',
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(rows) + "\n")
    code = main(["encode", str(tmp_path / "items.jsonl"), "--model", str(tiny_dir("qwen2_vl")), "--out",
                 str(tmp_path / "out" / "vecs"), "--instruction", "Represent it:", "--no-progress", "--json",
                 "--batch-size", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["encoded"] == 3 and summary["rejected"] == 3
    vecs = np.load(tmp_path / "out" / "vecs.npy")
    ids = (tmp_path / "out" / "vecs.ids.txt").read_text().split()
    assert ids == ["t1", "i1", "it"] and vecs.shape == (3, 64)
    errors = [json.loads(x) for x in (tmp_path / "out" / "vecs.errors.jsonl").read_text().splitlines()]
    assert {e["id"] for e in errors} == {"b1", "t1", None}
    assert any("items.jsonl:6" in e["source"] for e in errors)
    img = Image.open(tmp_path / "red.png")
    want = tiny_encoder("qwen2_vl").encode(
        ["a red square", img, mmsearch.Query(text="red", image=img)], instruction="Represent it:")
    np.testing.assert_allclose(vecs, want, atol=1e-5)


def test_encode_errors_exit_1(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"id": "x", "text": "y"}\n')
    code = main(["encode", str(tmp_path / "a.jsonl"), "--model", str(tmp_path / "missing-model"),
                 "--out", str(tmp_path / "o")])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
