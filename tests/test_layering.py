"""The import graph of `mmsearch` against the layer table in docs/architecture.md: every
edge (absolute and relative imports, at module level or inside functions), no edge to a
higher layer or to a sibling package of the same layer, no cycle, and nothing imports
`mmsearch.testing`. Also: `import mmsearch` loads no heavy dependency."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mmsearch"


def modules():
    """Dotted module name -> path, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges():
    """module -> the modules of the package it imports (a `from pkg import sub` names sub)."""
    mods = modules()
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(m, node, path.name == "__init__.py")
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [target] + subs
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {t for t in targets if t in mods and t != m}
    return edges


def layer_table():
    """docs/architecture.md's table: top-level package or module name -> layer."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layers = {}
    for line in text.splitlines():
        row = re.match(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", line)
        if row:
            for name in re.findall(r"`([\w.]+)`", row.group(2)):
                layers[name] = int(row.group(1))
    return layers


def group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mmsearch"


def strongly_connected(edges):
    """Tarjan's components of the graph (iterative: the graph is small, recursion is fine too)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for v in edges:
        if v not in index:
            visit(v)
    return comps


def test_every_package_has_a_layer():
    layers = layer_table()
    missing = sorted({group(m) for m in modules()} - set(layers))
    assert not missing, f"add these to the layer table in docs/architecture.md: {missing}"


def test_no_edge_goes_up_or_sideways():
    layers = layer_table()
    bad = []
    for m, targets in import_edges().items():
        for t in targets:
            a, b = group(m), group(t)
            if a != b and layers[b] >= layers[a]:
                bad.append(f"{m} -> {t} (layer {layers[a]} -> {layers[b]})")
    assert not bad, "imports against docs/architecture.md's layers:\n" + "\n".join(sorted(bad))


def test_the_library_never_imports_testing():
    bad = [m for m, targets in import_edges().items() if "mmsearch.testing" in targets]
    assert not bad, bad


def test_no_import_cycle():
    cycles = [c for c in strongly_connected(import_edges()) if len(c) > 1]
    assert not cycles, cycles


def test_the_checks_see_relative_and_function_level_imports(tmp_path):
    """The edge reader on a sample: relative, parent-relative and function-level imports."""
    edges = import_edges()
    assert "mmsearch.query.rerank_context" in edges["mmsearch.query.vlm"]       # from .rerank_context import
    assert "mmsearch.encoders" in edges["mmsearch.query.vlm"]                   # absolute
    assert "mmsearch.train.trainer" in edges["mmsearch.train"]                  # inside __getattr__
    assert "mmsearch.indexer.build" in edges["mmsearch.commands.index"] or any(
        t.startswith("mmsearch.indexer") for t in edges["mmsearch.commands.index"])
    comps = strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    assert ["a", "b"] in comps  # a planted cycle is found


@pytest.mark.parametrize("heavy", ["torch", "transformers", "faiss", "mmsearch.indexer", "mmsearch.query"])
def test_the_front_door_is_lazy(heavy):
    code = ("import sys, mmsearch; assert mmsearch.__version__; "
            f"print({heavy!r} in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", f"import mmsearch loaded {heavy}"


def test_the_front_door_still_has_every_name():
    code = ("import mmsearch; names = [getattr(mmsearch, n) for n in mmsearch.__all__]; "
            "assert set(mmsearch.__all__) <= set(dir(mmsearch)); print(len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert int(out.stdout) == 11
