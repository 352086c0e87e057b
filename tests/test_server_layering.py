"""The server is an outer layer: it imports the query engine and the core, and nothing in
mmsearch imports it back (but the `serve` command, lazily)."""
import ast
from pathlib import Path

import mmsearch

ROOT = Path(mmsearch.__file__).parent
ALLOWED = {"mmsearch.query", "mmsearch._version", "mmsearch.errors", "mmsearch.images", "mmsearch.index_format",
           "mmsearch.tasks", "mmsearch.types"}


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node


def test_server_imports_only_query_and_core():
    for path in (ROOT / "server").glob("*.py"):
        for module, _ in imports(path):
            if module.startswith("mmsearch"):
                assert module in ALLOWED, f"server/{path.name} imports {module}"


def test_nothing_imports_the_server():
    for path in ROOT.rglob("*.py"):
        if "server" in path.relative_to(ROOT).parts or path.name == "serve.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "mmsearch.server" not in text and "from .server" not in text and "from ..server" not in text, path


def test_serve_command_imports_the_server_lazily():
    tree = ast.parse((ROOT / "commands" / "serve.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" or isinstance(n, ast.Import)
               and all(a.name in ("argparse", "dataclasses", "os") for a in n.names) for n in top)
