"""What `import mmsearch` costs: `python -X importtime -c "import mmsearch"` (the package's
cumulative microseconds, best of --repeat runs) and which heavy libraries it loads.

    python benchmarks/import_time.py [--repeat 5]

Writes benchmarks/results/import_time.{json,md}.
"""
import argparse
import subprocess
import sys

from common import environment, save

HEAVY = ("torch", "transformers", "faiss", "pyarrow", "numpy", "mmsearch.indexer", "mmsearch.query")


def importtime_us() -> int:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mmsearch"], capture_output=True,
                         text=True, check=True).stderr.splitlines()
    return int(next(line for line in reversed(out) if line.rstrip().endswith("| mmsearch")).split("|")[1])


def loaded() -> list:
    code = f"import sys, mmsearch; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return [m for m in out.split(",") if m]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ms = min(importtime_us() for _ in range(args.repeat)) / 1000
    heavy = loaded()
    line = (f"`import mmsearch`: {ms:.1f} ms (`python -X importtime`, best of {args.repeat}); "
            f"loads {', '.join(heavy) if heavy else 'none of ' + ', '.join(HEAVY)}")
    save("import_time", dict(environment(), milliseconds=round(ms, 1), loads=heavy), line + "\n")
    print(line)


if __name__ == "__main__":
    main()
