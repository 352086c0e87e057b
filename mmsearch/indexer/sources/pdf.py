"""PDF documents: one item per page, rendered to an RGB PIL image with pypdfium2.

Each page item carries the `page` (1-based) and `pages` metadata that mark it as a
document page (`mmsearch.types.is_page`): the index stores it with modality "page",
embeds the rendered image with the page instruction, and keeps the page's text layer
(pypdfium2's extraction) as its text for display and as `page_text` metadata, which the
lexical index searches.

Pages are rendered lazily, one at a time, as the source is iterated. PDFium is not
thread-safe: iterate PDF sources from one thread at a time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

from mmsearch.errors import InputError
from mmsearch.index_format import PAGE_TEXT
from mmsearch.types import PAGE_KEYS, Item

from .base import Record, display, reject

DEFAULT_DPI = 144
# A page whose rendering would exceed this many pixels is rendered at a lower dpi.
MAX_PIXELS = 40_000_000


def check_dpi(dpi) -> None:
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 0 < dpi <= 2400:
        raise InputError(f"dpi={dpi!r}: expected a number in (0, 2400]")


@dataclass(frozen=True)
class PdfSource:
    """A PDF file; ids are ``"<name>#p<n>"`` with 1-based page numbers."""

    path: str
    dpi: float = DEFAULT_DPI
    password: Optional[str] = None
    name: Optional[str] = None  # the id prefix; None: the file name
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))
        check_dpi(self.dpi)
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise InputError(f"max_pixels={self.max_pixels!r}: expected a positive integer")
        if self.name is None:
            object.__setattr__(self, "name", os.path.basename(self.path))

    def describe(self) -> str:
        return f"PDF {display(self.path)} (pages rendered at {self.dpi} dpi)"

    def __iter__(self) -> Iterator[Record]:
        where0 = display(self.path)
        doc = self._open()
        if isinstance(doc, str):
            yield reject(where0, doc)
            return
        try:
            total = len(doc)
            if total == 0:
                yield reject(where0, "PDF has no pages")
            for index in range(total):
                yield self._page(doc, index, total, f"{where0}#p{index + 1}")
        finally:
            doc.close()

    def _open(self) -> Union[Any, str]:
        """The open `pypdfium2.PdfDocument`, or why it cannot be opened."""
        import pypdfium2 as pdfium

        try:
            if os.path.getsize(self.path) == 0:
                return "empty file (0 bytes), not a PDF"
            return pdfium.PdfDocument(self.path, password=self.password)
        except pdfium.PdfiumError as exc:
            return _load_error(exc, self.password)
        except OSError as exc:
            return f"cannot read: {exc}"

    def _page(self, doc, index: int, total: int, where: str) -> Record:
        import pypdfium2 as pdfium

        number = index + 1
        item_id = f"{self.name}#p{number}"
        try:
            page = doc[index]
        except pdfium.PdfiumError as exc:
            return reject(where, f"cannot load page {number} of {total}: {exc}", item_id)
        try:
            image = self._render(page)
            text = _page_text(page)
        except (pdfium.PdfiumError, ValueError, OSError, MemoryError) as exc:
            return reject(where, f"cannot render page {number} of {total}: {type(exc).__name__}: {exc}", item_id)
        finally:
            page.close()
        metadata = {PAGE_KEYS[0]: number, PAGE_KEYS[1]: total, "source": self.name}
        if text:  # the text layer, for lexical search (index_format.lexical indexes page_text)
            metadata[PAGE_TEXT] = text
        return Record(Item(id=item_id, text=text, image=image, metadata=metadata), where)

    def _render(self, page):
        width, height = page.get_size()  # points, 1/72 inch
        scale = self.dpi / 72
        pixels = width * height * scale * scale
        if pixels > self.max_pixels:
            scale *= (self.max_pixels / pixels) ** 0.5
        bitmap = page.render(scale=scale)
        try:
            return bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()


def _page_text(page) -> Optional[str]:
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_range()
    finally:
        textpage.close()
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return text or None


def _load_error(exc, password: Optional[str]) -> str:
    import pypdfium2.raw as raw

    reasons = {
        raw.FPDF_ERR_PASSWORD: "encrypted PDF (wrong password)" if password else "encrypted PDF (password required)",
        raw.FPDF_ERR_FORMAT: "not a PDF or corrupt (PDFium format error)",
        raw.FPDF_ERR_FILE: "file not found or could not be opened",
        raw.FPDF_ERR_SECURITY: "unsupported security scheme (PDFium security error)",
        raw.FPDF_ERR_PAGE: "page not found or content error",
    }
    return reasons.get(getattr(exc, "err_code", None), f"cannot open PDF: {exc}")
