"""Document pages rendered from text, and questions whose answer page is known.

Each page is about one made-up word (its *keyword*, unique in a collection): a
title, then short sentences of facts about it ("It comes from Telumi."). A
question names the keyword and asks for one fact, so exactly one page answers it.

Styles: ``page`` (title plus sentences, Pillow's default font scaled to the page)
and ``word`` (only the keyword, as large as fits: a reading curriculum's first step).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from .scenes import sentence

DOC_STYLES = ("page", "word")
DOC_CANDIDATES = ("page", "image")   # the instruction of page candidates in MMEB tables (see DocOptions)
FACT_KINDS = ("kind", "colour", "origin", "year")
THINGS = ("animal", "plant", "mineral", "machine", "river", "island", "dance", "tool")
HUES = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black", "grey", "brown")
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_CODAS = "klmnrs"
PAPER, INK = 250, 20


@dataclass(frozen=True)
class DocOptions:
    style: str = "page"
    page_size: Optional[int] = None   # pixels; None: the collection's image size
    font_size: Optional[int] = None   # body text; None: page_size / 11 (10 px at 112)
    filler: int = 0                   # extra sentences of made-up words per page
    # MMEB tables: "page" gives page candidates VLM2Vec's document instruction; "image" the generic
    # image one, which is what an index of screenshots or an M-BEIR pool gives them
    candidate: str = "page"

    def __post_init__(self) -> None:
        if self.style not in DOC_STYLES:
            raise InputError(f"unknown document style {self.style!r}; valid: {', '.join(DOC_STYLES)}")
        if self.candidate not in DOC_CANDIDATES:
            raise InputError(f"unknown page candidate instruction {self.candidate!r}; valid: "
                             f"{', '.join(DOC_CANDIDATES)}")
        if self.page_size is not None and not (isinstance(self.page_size, int) and 32 <= self.page_size <= 2048):
            raise InputError(f"page_size must be an integer in [32, 2048], got {self.page_size!r}")
        if self.font_size is not None and not (isinstance(self.font_size, int) and 6 <= self.font_size <= 200):
            raise InputError(f"font_size must be an integer in [6, 200], got {self.font_size!r}")
        if not isinstance(self.filler, int) or not 0 <= self.filler <= 20:
            raise InputError(f"filler must be an integer in [0, 20], got {self.filler!r}")


@dataclass(frozen=True)
class Page:
    keyword: str
    facts: Tuple[Tuple[str, str], ...]   # (kind, value) in page order
    filler: Tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.keyword.capitalize()

    def sentences(self) -> List[str]:
        kw = self.keyword
        say = {"kind": lambda v: f"the {kw} is a kind of {v}", "colour": lambda v: f"its colour is {v}",
               "origin": lambda v: f"it comes from {v}", "year": lambda v: f"it was found in {v}"}
        return [sentence(say[k](v)) for k, v in self.facts] + list(self.filler)

    def fact(self, kind: str) -> str:
        return dict(self.facts)[kind]


def pseudo_word(rng: np.random.Generator, syllables: Optional[int] = None) -> str:
    n = syllables or int(rng.integers(2, 4))
    parts = [_ONSETS[int(rng.integers(len(_ONSETS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))] for _ in range(n)]
    if rng.random() < 0.6:
        parts.append(_CODAS[int(rng.integers(len(_CODAS)))])
    return "".join(parts)


def sample_page(rng: np.random.Generator, keyword: str, opts: DocOptions) -> Page:
    values = {"kind": THINGS[int(rng.integers(len(THINGS)))], "colour": HUES[int(rng.integers(len(HUES)))],
              "origin": pseudo_word(rng).capitalize(), "year": str(int(rng.integers(1500, 2000)))}
    order = rng.permutation(len(FACT_KINDS))
    filler = tuple(sentence(" ".join(pseudo_word(rng) for _ in range(int(rng.integers(3, 6)))))
                   for _ in range(opts.filler))
    return Page(keyword, tuple((FACT_KINDS[i], values[FACT_KINDS[i]]) for i in order), filler)


def page_question(rng: np.random.Generator, page: Page) -> Tuple[str, str, str]:
    """(kind, question, answer) about one fact of the page."""
    kind = FACT_KINDS[int(rng.integers(len(FACT_KINDS)))]
    kw = page.keyword
    text = {"kind": f"what kind of thing is the {kw}?", "colour": f"what colour is the {kw}?",
            "origin": f"where does the {kw} come from?", "year": f"when was the {kw} found?"}[kind]
    return kind, sentence(text), page.fact(kind)


# ----------------------------------------------------------------- rendering

@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=65536)
def _width(size: int, word: str) -> float:
    return _font(size).getlength(word)


def _wrap(text: str, size: int, width: float) -> List[str]:
    """Greedy word wrap; a line's width is the sum of its words' and spaces' widths."""
    lines, line, used, space = [], [], 0.0, _width(size, " ")
    for word in text.split():
        w = _width(size, word)
        if line and used + space + w > width:
            lines.append(" ".join(line))
            line, used = [], 0.0
        used += (space if line else 0.0) + w
        line.append(word)
    return lines + ([" ".join(line)] if line else [])


def layout(page: Page, size: int, opts: DocOptions) -> List[Tuple[str, int, int, int]]:
    """The visible lines as (text, font_size, x, y); lines that do not fit are left out."""
    if opts.style == "word":
        fs = max(8, int(size * 0.9))
        while fs > 8 and _font(fs).getlength(page.title) > 0.9 * size:
            fs -= 1
        box = _font(fs).getbbox(page.title)
        return [(page.title, fs, (size - (box[2] - box[0])) // 2 - box[0], (size - (box[3] - box[1])) // 2 - box[1])]
    body = opts.font_size or max(6, round(size / 11))
    margin = max(2, size // 28)
    out, y = [], margin
    for text, fs in [(page.title, round(body * 1.6))] + [(s, body) for s in page.sentences()]:
        for line in _wrap(text, fs, size - 2 * margin):
            step = round(fs * 1.15)
            if y + step > size - margin // 2:
                return out
            out.append((line, fs, margin, y))
            y += step
    return out


@lru_cache(maxsize=4096)
def visible_text(page: Page, size: int, opts: DocOptions) -> str:
    return "\n".join(line for line, *_ in layout(page, size, opts))


def render_page(page: Page, size: int, opts: DocOptions) -> Image.Image:
    img = Image.new("RGB", (size, size), (PAPER, PAPER, PAPER))
    draw = ImageDraw.Draw(img)
    for text, fs, x, y in layout(page, size, opts):
        draw.text((x, y), text, fill=(INK, INK, INK), font=_font(fs))
    return img
