"""SIGKILL at random moments, then rerun the same command: every valid id exactly once."""
import os
import random
import signal
import subprocess
import sys
import time

from indexing_helpers import live_ids, make_corpus
from mmsearch.index_format import verify_index


def test_kill_and_resume(tmp_path, tiny_dir):
    path, valid, _ = make_corpus(tmp_path, n_valid=150, seed=5)
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "mmsearch", "index", "build", str(path), "--out", str(out), "--model",
           str(tiny_dir("qwen2_vl")), "--shard-size", "8", "--batch-size", "4", "--no-progress", "-q", "--max-image-pixels", "40000"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    rng = random.Random(7)
    killed = 0
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        if (out / "manifest.json").exists():
            assert verify_index(out) == []  # a reader never sees a torn shard or manifest
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    ids = live_ids(out)
    assert sorted(ids) == sorted(valid) and len(ids) == len(set(ids))
    assert verify_index(out) == []
    assert killed >= 1
    leftovers = [p.name for p in (out / "shards").iterdir() if not p.name.isdigit()]
    assert leftovers == []
