"""The library's layout: dependencies point one way (data -> fields -> meta-learning ->
classifiers -> evaluation -> study) and every source file is tracked by git."""

import ast
import shutil
import subprocess

import pytest

from enflens.io import REPO_ROOT

LIB = REPO_ROOT / "lib" / "enflens"
#: Layer of each sub-package; a module may import only from its own layer or lower ones.
LAYERS = {"data": 1, "fields": 2, "metalearn": 3, "classify": 4, "evaluate": 5, "study": 6}
#: Top-level modules: shared foundations (layer 0), except the consumers listed here.
CONSUMERS = {"testing": 5, "viz": 0}


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "enflens" or len(parts) < 2:
        return 0
    if parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return CONSUMERS.get(parts[1], 0)


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_dependencies_point_one_way():
    sources = sorted(LIB.rglob("*.py"))
    assert len(sources) > 20
    bad = []
    for path in sources:
        module = "enflens." + ".".join(path.relative_to(LIB).with_suffix("").parts)
        own = _layer(module)
        for imported in _imports(path):
            if imported.startswith("enflens") and _layer(imported) > own:
                bad.append(f"{module} (layer {own}) imports {imported} (layer {_layer(imported)})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_layer_check_catches_a_backward_import():
    assert _layer("enflens.study.cache") > _layer("enflens.data.store")
    assert _layer("enflens.grid") == 0 and _layer("enflens.classify.train") == 4


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(),
                    reason="not a git checkout")  # fmt: skip
def test_every_library_source_is_tracked():
    out = subprocess.run(["git", "ls-files", "lib"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    tracked = {REPO_ROOT / p for p in out}
    sources = set(LIB.rglob("*.py"))
    assert sources and not sources - tracked, sorted(map(str, sources - tracked))
