"""`mmsearch bench`: run the benchmark suite of a source checkout (benchmarks/ is not installed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import MMSearchError

SUITE = ("ann.py", "search_overhead.py", "index_pipeline.py", "encode_speed.py", "query_path.py")


def register(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmark suite (from a source checkout)",
                       description="Run benchmarks/*.py one after another; each writes JSON, Markdown and PNG "
                                   "to benchmarks/results/, then the README's Performance section is re-rendered.")
    p.add_argument("--quick", action="store_true", help="a few minutes per benchmark")
    p.add_argument("--only", nargs="+", choices=SUITE, default=None, help="run only these scripts")
    p.set_defaults(handler=run)


def run(args) -> int:
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (folder / "common.py").is_file():
        raise MMSearchError(f"no benchmarks/ folder next to this installation ({folder}); the benchmarks ship "
                            f"with the source checkout: git clone the repository and pip install -e '.[bench]'")
    failed = []
    for script in args.only or SUITE:
        cmd = [sys.executable, str(folder / script)]
        if args.quick and script not in ("encode_speed.py",):
            cmd.append("--quick")
        print(f"== {script}", file=sys.stderr, flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(script)
    subprocess.run([sys.executable, str(folder / "render_readme.py")])
    if failed:
        raise MMSearchError(f"benchmarks failed: {', '.join(failed)}")
    return 0
