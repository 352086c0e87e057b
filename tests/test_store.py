"""The LMDB store of an index: ids, embedding cache, tombstones, thumbnails, meta."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mmsearch.errors import InputError, StoreError
from mmsearch.store import Store, cache_key

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, **kwargs):
    """Run `code` in a fresh interpreter that imports this checkout's mmsearch."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def test_ids_round_trip(tmp_path):
    long_id = "x" * 600  # beyond LMDB's 511-byte key limit
    mapping = {f"id-{i}": i * 3 for i in range(257)} | {"ünï/çødé": 7_000_000_000, long_id: 5}
    with Store(tmp_path / "store.lmdb") as store:
        store.put_ids(mapping)
        assert store.count_ids() == 259
        assert store.get_row("ünï/çødé") == 7_000_000_000 and store.get_row(long_id) == 5
        assert store.get_row("x" * 601) is None and store.get_row("missing") is None
        rows = store.rows_for(["id-5", "missing", long_id])
        assert rows.dtype == np.int64 and rows.tolist() == [15, -1, 5]
        assert store.delete_ids(["id-5", "missing"]) == 1
        assert store.count_ids() == 258 and store.get_row("id-5") is None
        store.put_ids({"id-6": 99})  # overwrite
        with pytest.raises(InputError, match="int >= 0"):
            store.put_ids({"bad": -1})
        with pytest.raises(InputError, match="non-empty strings"):
            store.put_ids({"": 1})
    with Store(tmp_path / "store.lmdb") as store:  # durable across reopen
        assert store.get_row("id-6") == 99 and store.count_ids() == 258


def test_map_grows_past_initial_size(tmp_path):
    rng = np.random.default_rng(0)
    thumbs = {f"t{i}": rng.bytes(50_001) for i in range(83)}  # ~4 MiB in one transaction
    with Store(tmp_path / "s", map_size=1 << 20) as store:
        store.put_thumbnails(thumbs)
        assert store.map_size >= 4 << 20
        assert store.get_thumbnail("t82") == thumbs["t82"] and store.get_thumbnail("nope") is None
    with Store(tmp_path / "capped", map_size=1 << 20, max_map_size=2 << 20) as store:
        with pytest.raises(StoreError, match="full"):
            store.put_thumbnails(thumbs)
        store.put_ids({"a": 1})  # the failed batch left nothing half-written
        assert store.get_thumbnail("t0") is None and store.get_row("a") == 1


def test_cache_keys_are_distinct_and_stable():
    base = ("model@rev", "Represent the given image.", "sha-of-content")
    keys = {cache_key(*base), cache_key("model@rev2", *base[1:]), cache_key(base[0], "", base[2]),
            cache_key(*base[:2], "other"), cache_key("ab", "c", "h"), cache_key("a", "bc", "h")}
    assert len(keys) == 6 and all(len(k) == 32 for k in keys)
    assert cache_key(*base) == cache_key(*base) == Store.cache_key(*base)
    assert cache_key("m", "i", b"\x00\x01") == cache_key("m", "i", bytes([0, 1]))
    with pytest.raises(InputError, match="content_hash"):
        cache_key("m", "i", 123)


def test_cache_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    vectors = {cache_key("m", "i", str(i)): rng.normal(size=37).astype(np.float32) for i in range(101)}
    vectors[cache_key("m", "i", "f64")] = np.linspace(0, 1, 5)  # stored as float32
    with Store(tmp_path / "s") as store:
        store.cache_put_many(vectors)
        assert store.count_cached() == 102
        wanted = list(vectors)[:3] + [cache_key("m", "i", "absent")]
        got = store.cache_get_many(wanted)
        assert list(got) == wanted[:3]
        for key in wanted[:3]:
            assert got[key].dtype == np.float32
            np.testing.assert_array_equal(got[key], vectors[key])
        f64 = cache_key("m", "i", "f64")
        assert store.cache_get_many([f64])[f64].shape == (5,)
        with pytest.raises(InputError, match="1-d"):
            store.cache_put_many({b"k": np.zeros((2, 3))})


def test_tombstones(tmp_path):
    with Store(tmp_path / "s") as store:
        store.put_ids({"a": 10, "b": 3, "c": 7})
        assert store.add_tombstones(["a", "b"]) == 2
        assert store.add_tombstones(["a"]) == 0  # already deleted
        assert store.tombstoned_rows().tolist() == [3, 10]
        assert store.is_tombstoned("a") and not store.is_tombstoned("c")
        assert not store.is_tombstoned("unknown")
        with pytest.raises(InputError, match="not in the index"):
            store.add_tombstones(["c", "ghost"])
        assert not store.is_tombstoned("c")  # the whole batch was rejected
        # Re-adding "a" at a new row keeps its old row dropped.
        store.put_ids({"a": 11})
        assert not store.is_tombstoned("a")
        store.add_tombstones(["a"])
        assert store.tombstoned_rows().tolist() == [3, 10, 11]
        assert store.clear_tombstones(["a", "b", "unknown"]) == 2
        assert store.tombstoned_rows().tolist() == [10]
        assert store.tombstoned_rows().dtype == np.int64


def test_meta_values(tmp_path):
    with Store(tmp_path / "s") as store:
        store.set_meta("build", {"items": 3, "model": "m"})
        assert store.get_meta("build") == {"items": 3, "model": "m"}
        assert store.get_meta("nothing", default=0) == 0


def test_readonly_open(tmp_path):
    missing = tmp_path / "missing.lmdb"
    with pytest.raises(StoreError, match="missing data.mdb"):
        Store(missing, readonly=True)
    assert not missing.exists()  # a read-only open creates nothing
    path = tmp_path / "store.lmdb"
    with Store(path) as store:
        store.put_ids({"a": 1})
        store.add_tombstones(["a"])
    (path / "lock.mdb").unlink()  # e.g. an index copied without its lock file
    with Store(path, readonly=True) as store:
        assert store.get_row("a") == 1 and store.tombstoned_rows().tolist() == [1]
        with pytest.raises(StoreError, match="read-only"):
            store.put_ids({"b": 2})
    assert sorted(p.name for p in path.iterdir()) == ["data.mdb"]


def test_readonly_reader_follows_a_growing_writer(tmp_path):
    path = tmp_path / "store.lmdb"
    with Store(path, map_size=1 << 20) as store:
        store.put_ids({"first": 0})
    reader = Store(path, readonly=True, map_size=1 << 20)
    assert reader.get_row("first") == 0
    writer = run_python(f"""
        from mmsearch.store import Store
        with Store({str(path)!r}, map_size=1 << 20) as s:
            s.put_thumbnails({{f"t{{i}}": bytes(40_000) for i in range(100)}})
            s.put_ids({{"second": 1}})
        print("done")
    """)
    assert writer.communicate(timeout=60)[0].strip() == "done"
    # The map outgrew the reader's: it adopts the new size instead of reading past its end.
    assert reader.get_row("second") == 1 and len(reader.get_thumbnail("t99")) == 40_000
    assert reader.map_size >= 4 << 20
    reader.close()


def test_committed_batches_survive_sigkill(tmp_path):
    path = tmp_path / "store.lmdb"
    proc = run_python(f"""
        import sys
        from mmsearch.store import Store
        s = Store({str(path)!r})
        s.put_ids({{f"id-{{i}}": i for i in range(1000)}})
        print("committed", flush=True)
        n = 0
        while True:  # keep writing until killed
            s.put_ids({{f"more-{{n}}-{{i}}": i for i in range(100)}})
            n += 1
    """)
    assert proc.stdout.readline().strip() == "committed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    with Store(path) as store:
        assert store.rows_for([f"id-{i}" for i in range(1000)]).tolist() == list(range(1000))
        assert (store.count_ids() - 1000) % 100 == 0  # only whole batches
