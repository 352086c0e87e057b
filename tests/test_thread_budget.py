"""The thread budget of a local build: decode workers + torch threads never exceed the cores
this process may use, and however the threads are split, the index holds the vectors a
plain batched loop over the same items computes."""
import json
import os

import faiss
import numpy as np
import pytest
import torch

import mmsearch
from indexing_helpers import live_ids, make_corpus
from mmsearch.errors import InputError
from mmsearch.index_format import open_shard_index, read_manifest
from mmsearch.indexer.build import build_index
from mmsearch.indexer.settings import DEFAULT_INSTRUCTIONS, BuildSettings
from mmsearch.indexer.threads import available_cores, plan_threads, torch_threads

BATCH = 5  # odd, so batches straddle modalities and the pipeline's chunks


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 7, 8, 16, 64, 191])
def test_budget_never_oversubscribes(cores):
    for workers in [None, *range(cores + 3)]:
        b = plan_threads(cores, workers)
        assert b.decode_workers >= 0 and b.torch_threads >= 1, (cores, workers, b)
        assert b.decode_workers + b.torch_threads == cores, (cores, workers, b)  # every core used, none twice
        if workers is not None and workers < cores:
            assert b.decode_workers == workers  # an explicit count is honoured when it fits
        if workers is not None and workers >= cores:
            assert b.decode_workers == cores - 1 and "asked for" in b.describe()


def test_automatic_budget_gives_small_machines_to_the_model():
    assert plan_threads(1).torch_threads == 1 and plan_threads(1).decode_workers == 0
    assert plan_threads(2).torch_threads == 2 and plan_threads(2).decode_workers == 0
    assert plan_threads(3).decode_workers == 1 and plan_threads(16).decode_workers == 2
    assert "decoding in the encoder thread" in plan_threads(2).describe()
    assert "torch 15, 1 decode worker" in plan_threads(16, workers=1).describe()


@pytest.mark.parametrize("cores, workers", [(0, None), (2, -1), (2, 1.5), ("2", None)])
def test_bad_budget_inputs_say_what_is_valid(cores, workers):
    with pytest.raises(InputError, match="must be"):
        plan_threads(cores, workers)


def test_settings_accept_automatic_and_inline_workers():
    assert BuildSettings().workers is None and BuildSettings(workers=0).workers == 0
    with pytest.raises(InputError, match="workers must be an integer >= 0"):
        BuildSettings(workers=-1)


def test_available_cores_follow_the_affinity():
    before = os.sched_getaffinity(0)
    assert available_cores() == len(before)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert available_cores() == 1
    finally:
        os.sched_setaffinity(0, before)


def test_torch_threads_are_set_for_the_block_and_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _stored_vectors(out):
    """Vectors in row order (the shards' faiss Flat indexes hold them exactly)."""
    parts = []
    for shard in read_manifest(out).shards:
        index = open_shard_index(out, shard, mmap=False)
        flat = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        parts.append(flat.reconstruct_n(0, shard.rows))
    return np.concatenate(parts)


def _plain_loop(enc, root, valid: dict) -> np.ndarray:
    """The oracle: the valid items in input order, BATCH at a time, through `Encoder.encode`."""
    items, instructions = [], []
    for item_id, row in valid.items():
        text, image = row.get("text"), row.get("image")
        items.append(mmsearch.Item(id=item_id, text=text, image=str(root / image) if image else None))
        instructions.append(DEFAULT_INSTRUCTIONS["image,text" if text and image else ("image" if image else "text")])
    return np.concatenate([enc.encode(items[s:s + BATCH], instruction=instructions[s:s + BATCH], batch_size=BATCH,
                                      show_progress=False) for s in range(0, len(items), BATCH)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    path, valid, _ = make_corpus(root, n_valid=23)
    return root, path, valid


@pytest.mark.parametrize("workers", [0, 1, None])
def test_every_split_indexes_the_plain_loops_vectors(corpus, tiny_encoder, workers, tmp_path, capsys):
    root, path, valid = corpus
    enc = tiny_encoder("qwen2_vl")
    threads = torch.get_num_threads()
    out = tmp_path / "index"
    build_index([path], out, encoder=enc, index="Flat", batch_size=BATCH, workers=workers, show_progress=True,
                max_image_pixels=200 * 200)
    assert torch.get_num_threads() == threads  # the run's budget is undone after it
    budget = plan_threads(available_cores(), workers)
    assert budget.describe() in capsys.readouterr().err  # printed at the start of the build
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["workers"], stats["torch_threads"], stats["cores"]) == (
        budget.decode_workers, budget.torch_threads, available_cores())
    assert stats["reconciled"] and stats["indexed"] == len(valid)
    assert live_ids(out) == list(valid)  # input order kept
    np.testing.assert_allclose(_stored_vectors(out), _plain_loop(enc, root, valid), atol=2e-5)


def test_one_core_gets_one_torch_thread_and_no_worker(corpus, tiny_encoder, tmp_path):
    root, path, valid = corpus
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        build_index([path], tmp_path / "index", encoder=tiny_encoder("qwen2_vl"), batch_size=BATCH,
                    max_image_pixels=200 * 200)
    finally:
        os.sched_setaffinity(0, before)
    stats = json.loads((tmp_path / "index" / "stats.json").read_text())
    assert (stats["cores"], stats["torch_threads"], stats["workers"]) == (1, 1, 0)
    assert stats["indexed"] == len(valid)
