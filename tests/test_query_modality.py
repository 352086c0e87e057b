"""The modality vocabulary (mmsearch.types): each modality filter against brute force over
the stored rows, legacy pages (stored "image" with page/pages metadata) read as "page",
counts per modality, and PDF pages stored as "page"."""
import numpy as np
import pyarrow as pa
import pytest

from mmsearch import index_format as fmt
from mmsearch.errors import InputError
from mmsearch.query import open_index
from mmsearch.query.modality import modality_counts, read_pages
from mmsearch.store import Store
from mmsearch.types import IMAGE, IMAGE_TEXT, ITEM_MODALITIES, PAGE, TEXT, modalities_with, stored_modality
from test_query_support import TEST_MODEL, assert_same_knn, brute_force, clustered, split_sizes

N, K = 211, 7
X = clustered(N, seed=11)
XQ = clustered(9, seed=12)
DELETED = np.array([0, 5, 17, 100, 101, 210])
# stored strings: text, image, image,text, page, and "image" with page/pages (a legacy page)
STORED = [(TEXT, IMAGE, IMAGE_TEXT, PAGE, IMAGE, IMAGE)[r % 6] for r in range(N)]


def page_meta(r):
    legacy = r % 6 == 4
    return {"page": (r % 9) + 1 if STORED[r] == PAGE or legacy else None,
            "pages": 9 if STORED[r] == PAGE or legacy else None}


def effective(r):
    return stored_modality(STORED[r], page_meta(r))


def build(path):
    """An index of X with the STORED modalities in 3 shards, DELETED tombstoned."""
    path.mkdir(parents=True)
    manifest = fmt.Manifest.create(TEST_MODEL, fmt.FaissSpec("Flat"), {"page": "doc", "default": ""})
    start = 0
    for number, size in enumerate(split_sizes(N, 3)):
        rows = np.arange(start, start + size, dtype=np.int64)
        index = fmt.new_shard_index(path, manifest)
        index.add_with_ids(X[rows], rows)
        meta = fmt.build_meta_table([f"item-{r}" for r in rows], [STORED[r] for r in rows],
                                    [None if STORED[r] == IMAGE else f"t{r}" for r in rows],
                                    [None if STORED[r] == TEXT else f"img/{r}.png" for r in rows],
                                    [page_meta(int(r)) for r in rows])
        manifest = manifest.with_shard(fmt.write_shard(path, fmt.shard_name(number), index, rows, meta, X[rows]))
        start += size
    fmt.write_manifest(path, manifest)
    with Store(path / fmt.STORE_DIR) as store:
        store.put_ids({f"item-{r}": r for r in range(N)})
        store.add_tombstones([f"item-{r}" for r in DELETED])
    return path


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    return build(tmp_path_factory.mktemp("modality") / "index")


def test_vocabulary():
    assert ITEM_MODALITIES == ("text", "image", "image,text", "page")
    assert modalities_with("image") == ("image", "image,text", "page")
    assert modalities_with("text") == ("text", "image,text")
    assert modalities_with("image", "text") == ("image,text",)
    assert stored_modality("image", {"page": 3, "pages": 4}) == "page"
    assert stored_modality("image", {"page": None, "pages": None}) == "image"
    assert stored_modality("image,text", {"page": 3, "pages": 4}) == "image,text"


FILTERS = [  # (filter, the effective modalities it allows)
    ({"modality": "text"}, {TEXT}),
    ({"modality": "image"}, {IMAGE}),  # exactly image: not image,text, not pages (legacy ones neither)
    ({"modality": "image,text"}, {IMAGE_TEXT}),
    ({"modality": "page"}, {PAGE}),    # new pages and legacy ones
    ({"modality": ["text", "page"]}, {TEXT, PAGE}),
    ({"modality": {"ne": "image"}}, {TEXT, IMAGE_TEXT, PAGE}),
    ({"modality": {"has": "image"}}, {IMAGE, IMAGE_TEXT, PAGE}),
    ({"modality": {"has": "text"}}, {TEXT, IMAGE_TEXT}),
    ({"modality": {"has": ["image", "text"]}}, {IMAGE_TEXT}),
    ({"modality": {"has": "image"}, "page": {"gte": 5}}, {IMAGE, IMAGE_TEXT, PAGE}),
]


@pytest.mark.parametrize("filt,allowed", FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_each_modality_filter_matches_brute_force(index_path, filt, allowed):
    extra = filt.get("page", {}).get("gte")
    mask = np.array([effective(r) in allowed and (extra is None or (page_meta(r)["page"] or 0) >= extra)
                     for r in range(N)])
    mask[DELETED] = False
    assert mask.any()
    with open_index(index_path) as index:
        D, I = index.search_vectors(XQ, K, filter=filt)
        assert_same_knn(D, I, *brute_force(X, XQ, K, mask), X, XQ)
        # a huge k: every allowed row, none other
        _, I = index.search_vectors(XQ[:1], N, filter=filt)
        assert set(I[0][I[0] >= 0].tolist()) == set(np.flatnonzero(mask).tolist())
        for record in index.records(I[0][I[0] >= 0]):
            assert record["modality"] in allowed


def test_legacy_pages_read_as_pages_and_the_files_stay(index_path):
    with open_index(index_path) as index:
        records = index.records(list(range(N)))
        assert [r["modality"] for r in records] == [effective(r) for r in range(N)]
        assert records[4]["modality"] == PAGE and records[5]["modality"] == IMAGE
        counts = modality_counts(index)
    live = [effective(r) for r in range(N) if r not in set(DELETED.tolist())]
    assert counts == {m: live.count(m) for m in ITEM_MODALITIES}
    assert list(counts) == list(ITEM_MODALITIES)
    stored = pa.concat_tables([pa.ipc.open_file(str(p)).read_all().select(["modality"])
                               for p in sorted(index_path.glob("shards/*/meta.arrow"))])
    assert stored.column("modality").to_pylist() == STORED  # read as pages, not rewritten


def test_read_pages_leaves_tables_without_page_columns_alone():
    table = pa.table({"id": ["a", "b"], "modality": ["image", "text"]})
    assert read_pages(table) is table
    legacy = pa.table({"id": ["a", "b", "c"], "modality": ["image", "image", "text"], "page": [1, None, None],
                       "pages": [2, 2, None]})
    assert read_pages(legacy).column("modality").to_pylist() == ["page", "image", "text"]


@pytest.mark.parametrize("filt,message", [
    ({"modality": "images"}, "unknown modality 'images'; valid: text, image, image,text, page"),
    ({"modality": ["image", "pdf"]}, "unknown modality 'pdf'"),
    ({"modality": {"has": "video"}}, "'has' 'video': expected one of ['text', 'image']"),
    ({"modality": {"has": []}}, "'has' []"),
    ({"color": {"has": "image"}}, "'has' applies to 'modality' only"),
])
def test_bad_modality_filters_say_what_is_valid(index_path, filt, message):
    with open_index(index_path) as index, pytest.raises(InputError, match=None) as err:
        index.search_vectors(XQ[:1], K, filter=filt)
    assert message in str(err.value)


def test_pdf_pages_are_stored_as_pages(tmp_path, tiny_dir):
    from PIL import Image

    import mmsearch

    pages = [Image.new("RGB", (120, 160), c) for c in [(250, 250, 250), (200, 220, 240)]]
    pages[0].save(tmp_path / "doc.pdf", save_all=True, append_images=pages[1:])
    (tmp_path / "items.jsonl").write_text('{"id": "t", "text": "a note"}\n')
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "more.jsonl").write_text('{"id": "i", "image": "red.png"}\n{"id": "it", "image": "red.png", '
                                         '"text": "red"}\n')
    out = tmp_path / "index"
    mmsearch.build_index([tmp_path / "doc.pdf", tmp_path / "items.jsonl", tmp_path / "more.jsonl"], out,
                         model=str(tiny_dir("qwen2_vl")), device="cpu")
    with open_index(out) as index:
        by_id = {r["id"]: r["modality"] for r in index.records(list(range(len(index))))}
        assert by_id == {"doc.pdf#p1": PAGE, "doc.pdf#p2": PAGE, "t": TEXT, "i": IMAGE, "it": IMAGE_TEXT}
        assert modality_counts(index) == {TEXT: 1, IMAGE: 1, IMAGE_TEXT: 1, PAGE: 2}
        _, I = index.search_vectors(index.vectors([0]), 10, filter={"modality": {"has": "image"}})
        assert {r["id"] for r in index.records(I[0][I[0] >= 0])} == {"doc.pdf#p1", "doc.pdf#p2", "i", "it"}
