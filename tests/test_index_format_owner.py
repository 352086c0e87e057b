"""`mmsearch.index_format` alone knows the index folder: no other module spells one of its
file names, and no module reaches into another module's private names."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import mmsearch
from mmsearch import index_format as fmt

ROOT = Path(mmsearch.__file__).parent
PACKAGE = ROOT / "index_format"

# The folder's own names. "shards" is an ordinary word too (dict keys, messages), so it
# counts only where a path is built from it.
FILE_NAMES = (fmt.MANIFEST_FILE, fmt.TRAINED_FILE, fmt.INDEX_FILE, fmt.META_FILE, fmt.VECTORS_FILE, fmt.STORE_DIR,
              fmt.ERRORS_FILE, fmt.STATS_FILE, fmt.QUERY_BANK_FILE, fmt.QUERY_BANK_INFO_FILE, fmt.LOCK_FILE,
              fmt.TMP_MARK, fmt.RAY_STAGING_DIR[len(fmt.TMP_MARK):])
NAME_RE = re.compile("|".join(rf"(?<![\w.-]){re.escape(n)}(?![\w-])" for n in FILE_NAMES))
PATH_CALLS = {"Path", "join", "joinpath", "PurePath"}

def modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def docstrings(tree):
    """String statements (docstrings): documentation may name the files."""
    return {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}


def parents(tree):
    return {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def builds_a_path(node, parent_of) -> bool:
    parent = parent_of.get(id(node))
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div):
        return True
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in PATH_CALLS
    return False


def folder_names_outside_the_package():
    found = []
    for rel, tree in modules():
        if rel.startswith("index_format/"):
            continue
        skip, parent_of = docstrings(tree), parents(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
                continue
            if NAME_RE.search(node.value) or (node.value == fmt.SHARDS_DIR and builds_a_path(node, parent_of)):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def test_no_index_folder_file_name_outside_the_package():
    assert folder_names_outside_the_package() == [], "use mmsearch.index_format's names and path functions"


def test_the_scan_sees_literals(tmp_path, monkeypatch):
    """The scan flags the forms the names used to take, and not look-alikes."""
    sample = ('from pathlib import Path\n"""Docs may say manifest.json."""\n'
              'a = out / "store.lmdb"\nb = f"see {out / \'errors.jsonl\'}"\nc = Path(out, "shards")\n'
              'd = {"shards": 3}\ne = prefix + ".errors.jsonl"\nf = "train_errors.jsonl"\n')
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(sample)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    assert [f.split(":")[1] for f in folder_names_outside_the_package()] == ["3", "4", "5"]


def private_imports():
    found = []
    for rel, tree in modules():
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    imported.add(alias.asname or alias.name)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append((rel, alias.name, node.lineno))
            elif isinstance(node, ast.Import):  # only mmsearch's own modules (os._exit is a public API)
                imported.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("mmsearch"))
        for node in ast.walk(tree):  # module._private through an imported module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append((rel, f"{node.value.id}.{node.attr}", node.lineno))
    return found


def test_no_module_imports_another_modules_private_names():
    found = list(private_imports())
    assert found == [], "make the name public in the module that owns it"


def test_the_package_exports_resolve():
    for name in fmt.__all__:
        assert getattr(fmt, name) is not None
    assert set(fmt.__all__) <= set(dir(fmt))


def test_naming_a_file_does_not_load_faiss():
    """The CLI names files when it builds its parser: that must stay cheap."""
    code = ("import sys\nfrom mmsearch.index_format import MANIFEST_FILE, errors_path, require_index\n"
            "print(sorted(m for m in ('faiss', 'pyarrow', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
