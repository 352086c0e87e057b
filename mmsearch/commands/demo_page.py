"""The demo's HTML results page: thumbnails embedded, no external resources."""
from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;margin:24px;background:#f6f7f9;color:#222}
h1{font-size:20px}section{background:#fff;border-radius:8px;padding:12px 16px;margin:14px 0;
box-shadow:0 1px 3px #0002}.q{display:flex;gap:12px;align-items:center;margin-bottom:8px}
.hits{display:flex;gap:10px;flex-wrap:wrap}.hit{width:132px;font-size:12px;text-align:center;
border:2px solid transparent;border-radius:6px;padding:4px}.hit.ok{border-color:#2a9d4b;background:#eefaf1}
img{width:112px;height:112px;object-fit:contain;background:#eee;border-radius:4px}.t{font-size:13px}"""


def _thumb(path) -> str:
    if not path:
        return ""
    try:
        data = base64.b64encode(Path(path).read_bytes()).decode()
    except OSError:
        return ""
    return f'<img src="data:image/png;base64,{data}" alt="">'


def _hit(h: dict, answers) -> str:
    cls = "hit ok" if h["id"] in answers else "hit"
    body = _thumb(h["image"]) or f'<div class="t">{html.escape(h["text"] or "")}</div>'
    return (f'<div class="{cls}">{body}<div>#{h["rank"]} · {h["score"]:.3f}</div>'
            f'<div>{html.escape(h["id"])}</div></div>')


def write_page(path: Path, results: list, index) -> Path:
    parts = [f"<!doctype html><meta charset=utf-8><title>mmsearch demo</title><style>{STYLE}</style>",
             f"<h1>mmsearch demo — {html.escape(index.manifest.model.id)}, {len(index)} items</h1>",
             "<p>Green: the known right answer.</p>"]
    for r in results:
        q = _thumb(r["query_image"]) + (f'<div class="t">{html.escape(r["query_text"])}</div>'
                                         if r["query_text"] else "")
        hits = "".join(_hit(h, set(r["answers"])) for h in r["hits"])
        parts.append(f'<section><div><b>{html.escape(r["kind"])}</b></div><div class="q">{q}</div>'
                     f'<div class="hits">{hits}</div></section>')
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
