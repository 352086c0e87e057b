"""Token vectors of multi-vector models in shard folders: packing, precision, durability, verification."""
import numpy as np
import pytest

from mmsearch.errors import IndexFormatError, InputError
from mmsearch.index_format import TokenMatrix, load_shard_tokens
from mmsearch.index_format.tokens import read_tokens, write_tokens


def _items(seed=0, dim=16, counts=(7, 1, 30, 4)):
    rng = np.random.default_rng(seed)
    items = [rng.standard_normal((n, dim)).astype(np.float32) for n in counts]
    return [m / np.linalg.norm(m, axis=1, keepdims=True) for m in items]


@pytest.mark.parametrize("precision, tol", [("float16", 1e-3), ("int8", 1e-2)])
def test_pack_round_trip_within_precision(tmp_path, precision, tol):
    items = _items()
    packed = TokenMatrix.pack(items, precision)
    write_tokens(tmp_path, packed)
    back = read_tokens(tmp_path, rows=len(items))
    assert back.precision == precision and back.rows == len(items)
    assert back.counts().tolist() == [len(m) for m in items]
    for i, m in enumerate(items):
        assert np.abs(back.item(i) - m).max() < tol
    # bytes per token: 2 per dim as float16; 1 per dim + a 4-byte scale as int8
    per_token = (back.values.nbytes + (0 if back.scales is None else back.scales.nbytes)) / back.offsets[-1]
    assert per_token == (32 if precision == "float16" else 16 + 4)


def test_take_keeps_the_chosen_items_in_order():
    items = _items(1)
    packed = TokenMatrix.pack(items, "int8")
    kept = packed.take([3, 0])
    assert kept.rows == 2
    np.testing.assert_array_equal(kept.item(0), packed.item(3))
    np.testing.assert_array_equal(kept.item(1), packed.item(0))


def test_an_item_without_tokens_is_refused():
    with pytest.raises(InputError, match="item #1 has no token vectors"):
        TokenMatrix.pack([np.ones((2, 4)), np.zeros((0, 4))])


def test_offsets_that_do_not_match_are_found(tmp_path):
    write_tokens(tmp_path, TokenMatrix.pack(_items(), "float16"))
    np.save(tmp_path / "token_offsets.npy", np.array([0, 7, 8, 9, 99], dtype=np.int64))
    with pytest.raises(IndexFormatError, match="token offsets do not describe"):
        read_tokens(tmp_path)
    write_tokens(tmp_path, TokenMatrix.pack(_items(), "float16"))
    with pytest.raises(IndexFormatError, match="cover 4 items, the shard has 5"):
        read_tokens(tmp_path, rows=5)


def test_a_shard_with_tokens_is_written_and_read_back(tmp_path):
    import faiss

    from mmsearch.index_format import build_meta_table, write_shard

    items = _items(2)
    ids = np.arange(4, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(16))
    index.add_with_ids(np.stack([m.mean(0) for m in items]), ids)
    meta = build_meta_table([f"p{i}" for i in ids], ["page"] * 4, [None] * 4, [None] * 4)
    info = write_shard(tmp_path, "00000", index, ids, meta, tokens=TokenMatrix.pack(items, "int8"))
    assert info.has_tokens and "token_scales.npy" in info.files
    got = load_shard_tokens(tmp_path, info)
    assert got.rows == 4 and got.precision == "int8"
    assert np.abs(got.item(2) - items[2]).max() < 1e-2
    with pytest.raises(IndexFormatError, match="token offsets cover 3 items, the shard has 4"):
        write_shard(tmp_path, "00001", index, ids, meta, tokens=TokenMatrix.pack(items[:3], "int8"))
