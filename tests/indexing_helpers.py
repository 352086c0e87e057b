"""A small corpus with planted bad inputs, shared by the indexer tests."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 200, 20), (150, 40, 200)]


def make_corpus(root: Path, n_valid: int = 40, seed: int = 0):
    """items.jsonl (+ images) with n_valid good rows and one bad row of each kind.
    Returns (path, {valid id: row dict}, {bad id or line: expected reason fragment})."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines, valid = [], {}
    for i in range(n_valid):
        kind = i % 3
        row = {"id": f"item-{i:03d}", "n": int(i), "group": "even" if i % 2 == 0 else "odd"}
        if kind != 1:
            size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            Image.new("RGB", size, COLOURS[i % len(COLOURS)]).save(root / "img" / f"{i}.png")
            row["image"] = f"img/{i}.png"
        if kind != 0:
            row["text"] = f"a picture number {i} with {['red', 'green', 'blue'][i % 3]} things"
        lines.append(json.dumps(row))
        valid[row["id"]] = row
    (root / "img" / "zero.jpg").write_bytes(b"")
    (root / "img" / "text.jpg").write_text("I am not a JPEG")
    good = (root / "img" / "0.png").read_bytes()
    (root / "img" / "trunc.png").write_bytes(good[: len(good) // 2])
    (root / "img" / "corrupt.png").write_bytes(good[:40] + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    Image.new("RGB", (300, 300), (1, 2, 3)).save(root / "img" / "big.png")
    bad = {
        "zero": ("img/zero.jpg", "empty"), "nonimage": ("img/text.jpg", "not an image"),
        "trunc": ("img/trunc.png", "truncated"), "corrupt": ("img/corrupt.png", ""),
        "bomb": ("img/big.png", "pixels"), "missing": ("img/nope.png", "not found"),
    }
    for bid, (path, _) in bad.items():
        lines.append(json.dumps({"id": bid, "image": path}))
    lines.append(json.dumps({"id": "empty"}))
    lines.append(json.dumps({"text": "no id here"}))
    lines.append(json.dumps({"id": "item-001", "text": "duplicate of an earlier id"}))
    lines.append('{"id": "broken", "text": ')
    raw = "\n".join(lines).encode() + b"\n" + b'{"id": "latin1", "text": "caf\xe9"}\n'
    (root / "items.jsonl").write_bytes(raw)
    reasons = {k: v[1] for k, v in bad.items()}
    reasons.update({"empty": "empty", "item-001": "duplicate"})
    return root / "items.jsonl", valid, reasons


def expected_rejections(reasons) -> int:
    return len(reasons) + 3  # + the row without id, the broken line, the non-UTF-8 line


def live_ids(out) -> list:
    """The ids an index holds, in row order, deleted ones left out."""
    from mmsearch.index_format import open_shard_meta, read_manifest, store_path
    from mmsearch.store import Store

    with Store(store_path(out), readonly=True) as store:
        dead = set(store.tombstoned_rows().tolist())
    ids = []
    for shard in read_manifest(out).shards:
        for i, item_id in enumerate(open_shard_meta(out, shard).column("id").to_pylist()):
            if shard.id_start + i not in dead:
                ids.append(item_id)
    return ids
