"""Reports of an evaluation: JSON (everything), Markdown (tables) and a bar chart (PNG)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Dict, List, Sequence

from ..index_format import atomic_write_bytes, atomic_write_json


def model_info(encoder) -> dict:
    return {"model": encoder.name, "backbone": encoder.backbone, "dim": encoder.dim,
            "weights": getattr(encoder, "fingerprint", None), "dtype": str(getattr(encoder, "dtype", ""))}


def markdown_table(headers: Sequence[str], rows: List[Sequence]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bar_chart(path: Path, labels: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> bool:
    """A horizontal bar chart; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    ax.barh(range(len(labels)), values, color="#3b6ea8")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, max(values, default=0) * 1.05))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out_dir: Path, name: str, title: str, header: Dict[str, object], markdown_body: str,
                 data: dict, chart: tuple) -> Dict[str, str]:
    """Write NAME.json, NAME.md and NAME.png into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = dict(header, python=platform.python_version())
    atomic_write_json(out_dir / f"{name}.json", dict(data, **{"info": header}))
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in header.items()] + ["", markdown_body]
    png = out_dir / f"{name}.png"
    if bar_chart(png, *chart):
        lines.append(f"\n![{title}]({png.name})\n")
    atomic_write_bytes(out_dir / f"{name}.md", "\n".join(lines).encode("utf-8"))
    return {"json": str(out_dir / f"{name}.json"), "markdown": str(out_dir / f"{name}.md"),
            "chart": str(png) if png.exists() else None}


def mbeir_report(out_dir: Path, results: list, header: dict) -> Dict[str, str]:
    """M-BEIR: one row per (pair, pool) with its Recall@k, nDCG@10, MRR@10 and sizes; averages per pool."""
    rows, averages = [], {}
    for r in results:
        recall = {k: v for k, v in r.metrics.items() if k.startswith("recall@")}
        rows.append([r.pair, r.pool, ", ".join(f"{k}={v:.4f}" for k, v in recall.items()) or "-",
                     r.metrics.get("ndcg@10", float("nan")), r.metrics.get("mrr@10", float("nan")),
                     r.scored, sum(r.skipped.values()), r.pool_size, r.index, r.seconds, r.error or ""])
    for pool in sorted({r.pool for r in results}):
        ok = [r for r in results if r.pool == pool and r.metrics]
        if ok:
            keys = sorted({k for r in ok for k in r.metrics})
            averages[pool] = {k: round(sum(r.metrics.get(k, 0.0) for r in ok) / len(ok), 4) for k in keys}
    body = markdown_table(["pair", "pool", "Recall@k (hit@k)", "nDCG@10", "MRR@10", "scored", "skipped",
                           "pool size", "index", "seconds", "error"], rows)
    body += "\n## Averages\n\n" + markdown_table(
        ["pool", "metric", "mean"], [[p, k, v] for p, m in averages.items() for k, v in m.items()])
    labels = [f"{r.pair} ({r.pool})" for r in results if r.metrics]
    values = [_first_recall(r.metrics) for r in results if r.metrics]
    data = {"results": [vars(r) for r in results], "averages": averages}
    return write_report(out_dir, "mbeir_report", "M-BEIR retrieval", header, body, data,
                        (labels, values, "M-BEIR: first Recall@k per pair", "Recall@k (hit@k)"))


def _first_recall(metrics: dict) -> float:
    ks = sorted((int(k.split("@")[1]), v) for k, v in metrics.items() if k.startswith("recall@"))
    return ks[0][1] if ks else 0.0


def mmeb_report(out_dir: Path, results: list, summary: dict, header: dict) -> Dict[str, str]:
    rows = [[r.name, r.meta_task, r.split, r.hit_at_1, r.queries, r.skipped, r.candidates, r.seconds]
            for r in results]
    body = markdown_table(["dataset", "meta-task", "split", "hit@1", "queries", "skipped", "candidates",
                           "seconds"], rows)
    body += "\n## Averages\n\n" + markdown_table(["group", "hit@1"], [[k, v] for k, v in summary.items()])
    data = {"results": [vars(r) for r in results], "averages": summary}
    return write_report(out_dir, "mmeb_report", "MMEB", header, body, data,
                        ([r.name for r in results], [r.hit_at_1 for r in results], "MMEB hit@1", "hit@1"))
