"""Pages with a figure and a text layer, and two kinds of question: one quotes a rare
token printed on the page, the other paraphrases what the page shows.

Each PDF page carries a figure (a scene of coloured shapes, `datasets.scenes`, full page)
and one line of small print in the PDF's text layer naming the page's rare tokens: a
document id (``DOC-58213``), a part code (``KV-4821``) and an inspector's made-up name
(``Valomir Tesk``), each unique in the collection. Questions:

- ``quoted``: one of the page's rare tokens as a user would type it ("KV-4821");
  exactly one page holds it, and no embedding model reads 5 px print;
- ``paraphrased``: the figure described in words (the scene's caption), none of which
  is printed on any page, so only the picture can answer.

Files (BEIR, with PDFs): ``pdfs/docs-NN.pdf`` (``pages_per_pdf`` pages each),
``queries.jsonl`` ``{"_id", "text", "type", "token", "corpus-id"}`` with corpus ids as
mmsearch's PDF source names pages (``docs-00.pdf#p3``), and ``qrels/test.tsv``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from ..errors import InputError
from .docs import pseudo_word
from .output import prepare_root
from .scenes import SceneOptions, render_scene, sample_scene

QUERY_TYPES = ("quoted", "paraphrased")
TOKEN_KINDS = ("id", "code", "name")
OWNED = ("pdfs", "queries.jsonl", "qrels")
PAGE_INCHES = 2.0
_LETTERS = "ABCDEFGHJKLMNPRSTVWXZ"


@dataclass(frozen=True)
class HybridDocOptions:
    pages: int = 200
    pages_per_pdf: int = 50
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("pages", "pages_per_pdf"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
                raise InputError(f"{name} must be an integer in [1, 100000], got {v!r}")


@dataclass(frozen=True)
class DocPage:
    scene: object
    tokens: Dict[str, str]   # kind -> rare token

    def print_line(self) -> str:
        t = self.tokens
        return f"Record {t['id']}. Part {t['code']}. Inspector {t['name']}."


def _unique(make: Callable[[], str], used: set) -> str:
    for _ in range(10000):
        token = make()
        if token not in used:
            used.add(token)
            return token
    raise InputError(f"ran out of unique tokens after {len(used)}; ask for fewer pages")


def sample_pages(rng: np.random.Generator, n: int) -> List[DocPage]:
    used: set = set()
    letters = lambda k: "".join(_LETTERS[int(i)] for i in rng.integers(len(_LETTERS), size=k))  # noqa: E731
    pages = []
    for _ in range(n):
        scene = None
        while scene is None:
            scene = sample_scene(rng, SceneOptions(), lambda pair: True)
        tokens = {"id": _unique(lambda: f"DOC-{int(rng.integers(10000, 100000))}", used),
                  "code": _unique(lambda: f"{letters(2)}-{int(rng.integers(1000, 10000))}", used),
                  "name": _unique(lambda: f"{pseudo_word(rng).capitalize()} {pseudo_word(rng).capitalize()}", used)}
        pages.append(DocPage(scene, tokens))
    return pages


def write_pdf(path: Path, pages: List[DocPage]) -> None:
    """One page per DocPage: the figure full page, the print line in the text layer."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with matplotlib.rc_context({"pdf.fonttype": 42}):  # TrueType: a text layer PDFium extracts
        with PdfPages(path, metadata={"CreationDate": None}) as pdf:  # no timestamp: same bytes each run
            for page in pages:
                fig = plt.figure(figsize=(PAGE_INCHES, PAGE_INCHES))
                ax = fig.add_axes((0, 0, 1, 1))
                ax.imshow(np.asarray(render_scene(page.scene, 224)))
                ax.axis("off")
                fig.text(0.02, 0.01, page.print_line(), fontsize=4)
                pdf.savefig(fig)
                plt.close(fig)


def make_hybrid_docs(out: Union[str, Path], options: Optional[HybridDocOptions] = None) -> Dict[str, object]:
    """Write the collection into ``out`` (empty, or ``overwrite``); return a summary."""
    o = options or HybridDocOptions()
    start, root = time.perf_counter(), Path(out)
    prepare_root(root, OWNED, o.overwrite)
    rng = np.random.default_rng(o.seed)
    pages = sample_pages(rng, o.pages)
    (root / "pdfs").mkdir()
    ids = []
    for first in range(0, o.pages, o.pages_per_pdf):
        name = f"docs-{first // o.pages_per_pdf:02d}.pdf"
        chunk = pages[first:first + o.pages_per_pdf]
        write_pdf(root / "pdfs" / name, chunk)
        ids += [f"{name}#p{i + 1}" for i in range(len(chunk))]
    queries = []
    for n, page in enumerate(pages):
        kind = TOKEN_KINDS[n % len(TOKEN_KINDS)]
        queries.append({"_id": f"q-{len(queries):05d}", "text": page.tokens[kind], "type": "quoted",
                        "token": kind, "corpus-id": ids[n]})
        queries.append({"_id": f"q-{len(queries):05d}", "text": page.scene.caption(), "type": "paraphrased",
                        "token": None, "corpus-id": ids[n]})
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q['_id']}\t{q['corpus-id']}\t1\n" for q in queries),
        encoding="utf-8")
    return {"root": str(root), "pages": o.pages, "pdfs": len(range(0, o.pages, o.pages_per_pdf)),
            "queries": len(queries), "seed": o.seed, "seconds": round(time.perf_counter() - start, 2)}
