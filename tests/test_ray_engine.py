"""The Ray engine (`engine="ray"`) against the local engine, on a local Ray cluster.

Partitions are checked without Ray. The rest runs on one `ray.init(num_cpus=2)` per
module: the same ids, metadata, vectors and brute-force search results as the local
engine; an encoder actor SIGKILLed mid-run; a driver SIGKILLed mid-run, then rerun.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexing_helpers import make_corpus
from mmsearch.index_format import open_shard_index, open_shard_meta, read_manifest, verify_index
from mmsearch.indexer.build import build_index
from mmsearch.indexer.partitions import plan_partitions, read_partition
from mmsearch.indexer.sources import iter_sources
from mmsearch.store import Store

OPTS = dict(shard_size=16, batch_size=4, max_image_pixels=200 * 200)


# --- partitions (no Ray needed) -------------------------------------------------------------

def _records(recs):
    return [(r.where, r.item.id if r.item else r.id, r.error, r.item.text if r.item else None,
             dict(r.item.metadata) if r.item else None) for r in recs]


def _folder(root):
    for i in range(23):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 0, 0)).save(sub / f"{i:02d}.png")
        if i % 4 == 0:
            (sub / f"{i:02d}.txt").write_text(f"caption {i}")
    return root


def _parquet(path):
    table = pa.table({"id": [f"p{i}" for i in range(50)], "text": [f"row {i}" for i in range(50)],
                      "n": list(range(50))})
    pq.write_table(table, path, row_group_size=6)
    return path


@pytest.mark.parametrize("size", [1, 5, 7, 1000])
def test_partitions_read_exactly_what_the_sources_yield(tmp_path, size):
    jsonl, _, _ = make_corpus(tmp_path / "c", n_valid=12, seed=9)
    sources = [str(jsonl), str(_parquet(tmp_path / "t.parquet")), str(_folder(tmp_path / "f"))]
    parts = plan_partitions(sources, None, {}, size)
    assert [p.index for p in parts] == list(range(len(parts)))
    assert parts == plan_partitions(sources, None, {}, size)  # deterministic
    if size <= 7:
        assert len({p.path for p in parts}) == 3 and len(parts) > 6
    together = [rec for p in parts for rec in read_partition(p, {})]
    assert _records(together) == _records(iter_sources(sources))


def test_partition_options_are_checked(tmp_path):
    from mmsearch.errors import InputError

    jsonl, _, _ = make_corpus(tmp_path, n_valid=3)
    with pytest.raises(InputError, match="unknown source option"):
        plan_partitions([str(jsonl)], None, {"nope": 1}, 10)
    with pytest.raises(InputError, match="partition_size"):
        plan_partitions([str(jsonl)], None, {}, 0)
    with pytest.raises(InputError, match="engine='spark'; valid: local, ray"):
        build_index([jsonl], tmp_path / "x", model="m", engine="spark")


# --- the engine on a local cluster ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="the Ray engine needs Ray Data: pip install 'ray[data]'")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-corpus")
    return make_corpus(root, n_valid=40, seed=11)


@pytest.fixture(scope="module")
def local_index(corpus, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "index"
    return out, build_index([corpus[0]], out, model=str(tiny_dir("qwen2_vl")), **OPTS)


@pytest.fixture(scope="module")
def ray_index(cluster, corpus, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "index"
    # partitions of 7 lines: the duplicate of item-001 (near the end) is in another partition
    return out, build_index([corpus[0]], out, model=str(tiny_dir("qwen2_vl")), engine="ray",
                            partition_size=7, **OPTS)


def _rows(out):
    """id -> (global row, float32 vector from the faiss shard, meta row)."""
    rows = {}
    for shard in read_manifest(out).shards:
        index = open_shard_index(out, shard, mmap=False)
        vectors = faiss.downcast_index(index.index).reconstruct_n(0, shard.rows)
        for i, meta in enumerate(open_shard_meta(out, shard).to_pylist()):
            assert meta["id"] not in rows, f"{meta['id']} indexed twice"
            rows[meta["id"]] = (shard.id_start + i, vectors[i], meta)
    return rows


def _errors(out):
    return sorted((e["id"] or "", e["source"], e["reason"])
                  for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines()))


def _assert_same_index(a, b, atol=1e-5):
    ra, rb = _rows(a), _rows(b)
    assert sorted(ra) == sorted(rb)
    for item_id in ra:
        assert ra[item_id][2] == rb[item_id][2], item_id
        np.testing.assert_allclose(ra[item_id][1], rb[item_id][1], atol=atol, err_msg=item_id)
    assert verify_index(a) == [] and verify_index(b) == []
    with Store(b / "store.lmdb", readonly=True) as store:
        for item_id, (row, _, _) in rb.items():
            assert store.get_row(item_id) == row


def test_same_result_as_local(local_index, ray_index, corpus):
    (lo, lr), (ro, rr) = local_index, ray_index
    _, valid, _ = corpus
    assert (rr.read, rr.indexed, rr.rejected, rr.skipped) == (lr.read, lr.indexed, lr.rejected, lr.skipped)
    assert rr.read == rr.indexed + rr.rejected + rr.skipped and rr.indexed == len(valid)
    _assert_same_index(lo, ro)
    assert _errors(ro) == _errors(lo)  # including the duplicate id across partitions
    m = read_manifest(ro)
    assert m.model == read_manifest(lo).model and dict(m.instructions) == dict(read_manifest(lo).instructions)
    assert all(s.rows <= OPTS["shard_size"] for s in m.shards)
    with Store(ro / "store.lmdb", readonly=True) as store:
        assert store.get_thumbnail("item-000") is not None
        assert store.count_cached() == len(valid) + 1  # the duplicate was encoded, then rejected
    stats = json.loads((ro / "stats.json").read_text())
    assert stats["engine"] == "ray" and stats["reconciled"] and stats["partitions"] == 8
    assert all(stats["busy_seconds"][s] > 0 for s in ("read", "decode", "encode", "write"))
    assert not (ro / ".tmp-ray-staging").exists()


def test_same_search_results(local_index, ray_index, tiny_encoder):
    def matrix(out):
        rows = _rows(out)
        ids = sorted(rows)
        return ids, np.stack([rows[i][1] for i in ids])

    (ids, xl), (ids_r, xr) = matrix(local_index[0]), matrix(ray_index[0])
    assert ids == ids_r
    queries = tiny_encoder("qwen2_vl").encode(["a picture number 3 with red things", "green", "blue things",
                                              "picture 17", "number 30"])
    queries = np.concatenate([queries, xl[::7]])
    dl, il = faiss.knn(queries, xl, 10, metric=faiss.METRIC_INNER_PRODUCT)
    dr, ir = faiss.knn(queries, xr, 10, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_allclose(dl, dr, atol=1e-5)
    for q in range(len(queries)):  # the same hits; ids may swap only where scores tie
        above = dl[q, -1] + 1e-5
        assert {i for i, d in zip(il[q], dl[q]) if d > above} == {i for i, d in zip(ir[q], dr[q]) if d > above}


def test_rerun_skips_and_add_rejects(ray_index, corpus, tiny_dir, tmp_path):
    out, first = ray_index
    path, valid, _ = corpus
    again = build_index([path], out, model=str(tiny_dir("qwen2_vl")), engine="ray", partition_size=7, **OPTS)
    assert again.skipped == len(valid) and again.indexed == 0 and again.rejected == first.rejected
    assert again.stats["encoded"] == 0 and again.shards == first.shards
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"id": "new-1", "text": "a new caption"}\n{"id": "item-002", "text": "changed"}\n')
    from mmsearch.indexer.build import add_to_index

    added = add_to_index(out, [extra], engine="ray", **OPTS)
    assert (added.indexed, added.rejected) == (1, 1) and "new-1" in _rows(out)
    assert verify_index(out) == []


def test_cache_avoids_reencoding(ray_index, local_index, corpus, tiny_dir, tmp_path):
    import shutil

    out, _ = ray_index
    path, valid, _ = corpus
    copy = tmp_path / "copy"  # lose every shard but keep the store: vectors come back from its cache
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "shards")
    (copy / "manifest.json").unlink()
    with Store(copy / "store.lmdb") as store:
        store.delete_ids(list(valid) + ["new-1"])  # (new-1: if the add test ran first)
    redo = build_index([path], copy, model=str(tiny_dir("qwen2_vl")), engine="ray", partition_size=7, **OPTS)
    assert redo.indexed == len(valid) and redo.stats["encoded"] == 0
    assert redo.stats["cache_hits"] == len(valid) + 1  # + the duplicate, rejected after encoding
    _assert_same_index(local_index[0], copy)


def test_ivf_is_trained_by_the_driver(cluster, tiny_dir, tmp_path):
    path, valid, _ = make_corpus(tmp_path, n_valid=60, seed=12)
    out = tmp_path / "ivf"
    r = build_index([path], out, model=str(tiny_dir("qwen2_vl")), engine="ray", index="IVF4,Flat",
                    partition_size=20, **OPTS)
    m = read_manifest(out)
    assert r.indexed == len(valid) and m.faiss.trained_path == "trained.faiss"
    assert "nprobe" in dict(m.faiss.search_params) and verify_index(out) == []


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_compact_codes_equal_the_local_build(cluster, corpus, local_index, tiny_dir, tmp_path, precision):
    """Issue #25 on Ray: compact codes of the same kind and the same rescored answers as a local
    build of the same items. (int8 ranges are calibrated on the vectors the driver receives
    first, not the local build's first rows, so the codes may differ slightly.)"""
    from mmsearch.query import open_index

    model = str(tiny_dir("qwen2_vl"))
    lo, ro = tmp_path / "local", tmp_path / "ray"
    build_index([corpus[0]], lo, model=model, precision=precision, **OPTS)
    build_index([corpus[0]], ro, model=model, engine="ray", partition_size=7, precision=precision, **OPTS)
    ml, mr = read_manifest(lo), read_manifest(ro)
    assert mr.compact is not None and verify_index(ro) == []
    assert (mr.compact.precision, mr.compact.dim, mr.compact.oversample) == (precision, ml.compact.dim, 4.0)
    assert (mr.compact.ranges is None) == (ml.compact.ranges is None) == (precision == "binary")
    xq = np.stack([v for _, v, _ in _rows(local_index[0]).values()])[::5]
    with open_index(lo) as a, open_index(ro) as b:
        ids = lambda ix, I: [[ix.records([r])[0]["id"] if r >= 0 else None for r in row] for row in I]  # noqa: E731
        (da, ia), (db, ib) = a.search_vectors(xq, 5), b.search_vectors(xq, 5)
        np.testing.assert_allclose(da, db, atol=1e-5)
        assert ids(a, ia) == ids(b, ib)


# --- faults ----------------------------------------------------------------------------------

class _Replayed:
    """Stands in for the Ray Data pipeline: runs the real decode and encode stages in this
    process, then delivers every encoded batch twice (the second time re-encoded and
    staged under a new name, as a retried actor task does), later partitions first."""

    def __init__(self, job):
        self.job = job

    def iter_batches(self, **_):
        from mmsearch.indexer.ray_stages import EncodeActor, decode_partition

        job = self.job
        actor = EncodeActor(job)
        decoded = [list(decode_partition({"part": p.index}, job)) for p in job.partitions]
        batches = [{k: np.array([r[k] for r in rows], dtype=object if isinstance(rows[0][k], (str, bytes)) else None)
                    for k in rows[0]} for rows in decoded]
        for batch in reversed(batches):
            yield actor(batch)
        for batch in batches:
            yield actor(batch)


def test_records_delivered_twice_or_late_count_once(cluster, corpus, local_index, tiny_dir, tmp_path,
                                                     monkeypatch):
    from mmsearch.indexer.ray_engine import RayEngine

    monkeypatch.setattr(RayEngine, "_dataset", lambda self, job: _Replayed(job))
    out = tmp_path / "index"
    r = build_index([corpus[0]], out, model=str(tiny_dir("qwen2_vl")), engine="ray", partition_size=7, **OPTS)
    lo, lr = local_index
    assert (r.read, r.indexed, r.rejected, r.skipped) == (lr.read, lr.indexed, lr.rejected, lr.skipped)
    assert r.stats["encoded"] == 2 * (len(corpus[1]) + 1)  # every batch was encoded twice ...
    _assert_same_index(lo, out)                           # ... and indexed once
    assert _errors(out) == _errors(lo)


def _our_processes(marker):
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):  # the local cluster runs under this process
        try:
            if marker in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _kill_encoder_once(staging, killed, deadline):
    """SIGKILL the encoder actor as soon as it has staged its first batch."""
    while time.time() < deadline and not killed:
        if staging.is_dir() and any(staging.glob("*.arrow")):
            for p in _our_processes("EncodeActor"):
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
            return
        time.sleep(0.005)


def test_encoder_actor_killed_mid_run(cluster, tiny_dir, tmp_path):
    path, valid, _ = make_corpus(tmp_path, n_valid=120, seed=13)
    model = str(tiny_dir("qwen2_vl"))
    out = tmp_path / "ray"
    killed = []
    killer = threading.Thread(target=_kill_encoder_once, args=(out / ".tmp-ray-staging", killed, time.time() + 300))
    killer.start()
    r = build_index([path], out, model=model, engine="ray", partition_size=10, **OPTS)
    killer.join()
    assert killed, "the encoder actor was never killed"
    assert r.indexed == len(valid) and r.read == r.indexed + r.rejected + r.skipped
    local = build_index([path], tmp_path / "local", model=model, **OPTS)
    assert r.rejected == local.rejected
    _assert_same_index(tmp_path / "local", out)  # every id exactly once, the same vectors


def test_driver_killed_then_rerun_resumes(cluster, tiny_dir, tmp_path):
    path, valid, _ = make_corpus(tmp_path, n_valid=200, seed=14)
    model = str(tiny_dir("qwen2_vl"))
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "mmsearch", "index", "build", str(path), "--out", str(out), "--model", model,
           "--engine", "ray", "--ray-address", cluster, "--partition-size", "10", "--shard-size", "16",
           "--batch-size", "4", "--max-image-pixels", "40000", "--no-progress", "-q"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "manifest.json").exists() and read_manifest(out).shards:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    committed = read_manifest(out).total_rows
    assert 0 < committed < len(valid) and verify_index(out) == []
    r = build_index([path], out, model=model, engine="ray", partition_size=10, **OPTS)
    assert r.skipped == committed and r.indexed == len(valid) - committed
    assert r.stats["encoded"] + r.stats["cache_hits"] >= r.indexed
    local = build_index([path], tmp_path / "local", model=model, **OPTS)
    assert r.rejected == local.rejected
    _assert_same_index(tmp_path / "local", out)
