"""A ViDoRe-like collection in the BEIR layout: rendered pages of four regions, and
questions that each ask about ONE region of one page.

A page is a 2 x 2 grid, the regions in a random order: a *title* (the page's made-up
word, as large as fits), a *paragraph* (a short document page: a made-up word and facts
about it), a *table* (a made-up name over rows of made-up items and numbers) and a
*figure* (a scene of shapes over the caption "Figure: <made-up word>"). Every made-up
word is unique in the collection, and a question names its region's word, so exactly
one page answers it. The regions reuse the document and scene generators' rendering.

Files (BEIR, as ViDoRe v2 on the hub): ``corpus.jsonl`` ``{"_id", "image"}`` with the
image a path under ``images/`` (or ``corpus.parquet`` with ``corpus-id`` and the image
bytes as Hugging Face stores them), ``queries.jsonl`` ``{"_id", "text", "region",
"answer", "corpus-id"}``, and ``qrels/test.tsv`` (``query-id corpus-id score``).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from .docs import DocOptions, Page, page_question, pseudo_word, render_page, sample_page
from .output import prepare_root
from .scenes import SceneOptions, render_scene, sample_scene, sentence

REGIONS = ("title", "paragraph", "table", "figure")
CORPUS_FORMATS = ("jsonl", "parquet")
OWNED = ("corpus.jsonl", "corpus.parquet", "queries.jsonl", "qrels", "images")
TABLE_ROWS = 3
INK, PAPER = (20, 20, 20), (250, 250, 250)


@dataclass(frozen=True)
class VidoreOptions:
    pages: int = 200
    queries: int = 400          # spread over the pages in turn, each page's regions in a random order
    seed: int = 0
    page_size: int = 448        # pixels; each region is a quarter of the page
    corpus: str = "jsonl"       # jsonl (image paths) or parquet (image bytes)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pages, int) or self.pages < 1:
            raise InputError(f"pages must be a positive integer, got {self.pages!r}")
        if not isinstance(self.queries, int) or not 1 <= self.queries <= len(REGIONS) * self.pages:
            raise InputError(f"queries must be an integer in [1, {len(REGIONS) * self.pages}] "
                             f"(at most one per region of each page), got {self.queries!r}")
        if not isinstance(self.page_size, int) or not 128 <= self.page_size <= 2048:
            raise InputError(f"page_size must be an integer in [128, 2048], got {self.page_size!r}")
        if self.corpus not in CORPUS_FORMATS:
            raise InputError(f"unknown corpus format {self.corpus!r}; valid: {', '.join(CORPUS_FORMATS)}")


@dataclass(frozen=True)
class Region:
    kind: str
    word: str                       # its made-up word, unique in the collection
    question: str
    answer: str
    draw: Callable[[int], Image.Image]  # side in pixels -> the region's picture


class _Words:
    """Made-up words never handed out twice."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.used = rng, set()

    def new(self) -> str:
        for _ in range(10000):
            word = pseudo_word(self.rng)
            if word not in self.used:
                self.used.add(word)
                return word
        raise InputError(f"ran out of made-up words after {len(self.used)}; ask for fewer pages")


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _title(word: str) -> Region:
    page = Page(word, ())
    return Region("title", word, f"Find the page titled {page.title}.", page.title,
                  lambda side: render_page(page, side, DocOptions(style="word")))


def _paragraph(rng: np.random.Generator, word: str) -> Region:
    page = sample_page(rng, word, DocOptions())
    _, question, answer = page_question(rng, page)
    return Region("paragraph", word, question, answer, lambda side: render_page(page, side, DocOptions()))


def _table(rng: np.random.Generator, words: _Words) -> Region:
    name = words.new()
    rows = [(words.new(), str(int(rng.integers(10, 1000)))) for _ in range(TABLE_ROWS)]
    item, value = rows[int(rng.integers(TABLE_ROWS))]
    return Region("table", name, sentence(f"what is the value of {item} in the {name} table?"), value,
                  lambda side: _draw_table(name, rows, side))


def _draw_table(name: str, rows: List[Tuple[str, str]], side: int) -> Image.Image:
    img = Image.new("RGB", (side, side), PAPER)
    draw = ImageDraw.Draw(img)
    fs, margin = max(8, side // 11), side // 14
    step = (side - 2 * margin) // (len(rows) + 2)
    draw.text((margin, margin), f"Table: {name.capitalize()}", fill=INK, font=_font(round(fs * 1.2)))
    mid = side // 2 + margin
    for i, (item, value) in enumerate([("item", "value")] + rows, start=1):
        y = margin + i * step
        draw.rectangle((margin, y, side - margin, y + step), outline=INK)
        draw.line((mid, y, mid, y + step), fill=INK)
        draw.text((margin + 4, y + step // 5), item, fill=INK, font=_font(fs))
        draw.text((mid + 4, y + step // 5), value, fill=INK, font=_font(fs))
    return img


def _figure(rng: np.random.Generator, word: str) -> Region:
    scene = None
    while scene is None:
        scene = sample_scene(rng, SceneOptions(), lambda pair: True)
    return Region("figure", word, sentence(f"which shapes are shown in the {word} figure?"), scene.caption(),
                  lambda side: _draw_figure(scene, word, side))


def _draw_figure(scene, word: str, side: int) -> Image.Image:
    img = Image.new("RGB", (side, side), PAPER)
    band = side // 6
    img.paste(render_scene(scene, side - band), (band // 2, 0))
    fs = max(8, side // 11)
    ImageDraw.Draw(img).text((band // 2, side - band + (band - fs) // 2), f"Figure: {word.capitalize()}",
                             fill=INK, font=_font(fs))
    return img


def sample_regions(rng: np.random.Generator, words: _Words) -> List[Region]:
    """One page's regions, in page order (left to right, top to bottom)."""
    regions = [_title(words.new()), _paragraph(rng, words.new()), _table(rng, words), _figure(rng, words.new())]
    return [regions[i] for i in rng.permutation(len(regions))]


def render(regions: List[Region], size: int) -> Image.Image:
    page, half = Image.new("RGB", (size, size), PAPER), size // 2
    for i, region in enumerate(regions):
        page.paste(region.draw(half - 4), ((i % 2) * half + 2, (i // 2) * half + 2))
    return page


def make_vidore(out: Union[str, Path], options: Optional[VidoreOptions] = None, *,
                progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, object]:
    """Write the collection into ``out`` (empty, or ``overwrite``); return a summary."""
    o = options or VidoreOptions()
    start, root = time.perf_counter(), Path(out)
    prepare_root(root, OWNED, o.overwrite)
    rng = np.random.default_rng(o.seed)
    words = _Words(rng)
    pages = [sample_regions(rng, words) for _ in range(o.pages)]
    asked = [rng.permutation(len(REGIONS)) for _ in pages]  # which region each page's n-th query asks about
    corpus = []
    for n, regions in enumerate(pages):
        png = io.BytesIO()
        render(regions, o.page_size).save(png, format="PNG", compress_level=3)
        corpus.append((f"page-{n:05d}", png.getvalue()))
        if progress is not None:
            progress(n + 1, o.pages)
    queries = []
    for q in range(o.queries):
        n, turn = q % o.pages, q // o.pages
        region = pages[n][asked[n][turn]]
        queries.append({"_id": f"q-{q:05d}", "text": region.question, "region": region.kind,
                        "answer": region.answer, "corpus-id": corpus[n][0]})
    _write_corpus(root, corpus, o.corpus)
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{r['_id']}\t{r['corpus-id']}\t1\n" for r in queries),
        encoding="utf-8")
    return {"root": str(root), "pages": o.pages, "queries": o.queries, "page_size": o.page_size,
            "corpus": o.corpus, "seed": o.seed, "seconds": round(time.perf_counter() - start, 2)}


def _write_corpus(root: Path, corpus: List[Tuple[str, bytes]], fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        rows = [{"corpus-id": cid, "image": {"bytes": data, "path": f"{cid}.png"}} for cid, data in corpus]
        schema = pa.schema([("corpus-id", pa.string()), ("image", image)])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "corpus.parquet", compression="zstd")
        return
    (root / "images").mkdir()
    for cid, data in corpus:
        (root / "images" / f"{cid}.png").write_bytes(data)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": cid, "image": f"images/{cid}.png"}) + "\n" for cid, _ in corpus), encoding="utf-8")
