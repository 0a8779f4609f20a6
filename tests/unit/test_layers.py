"""The package's layers import downward only: wire <- core <- io <- cli."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "pycopy_engine"
RANK = {"wire": 0, "core": 1, "io": 2, "cli": 3}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = list(path.relative_to(PKG).parts[:-1])
                base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                mod = ".".join(base + ([node.module] if node.module else []))
                yield node.lineno, mod
            elif node.module and node.module.startswith("pycopy_engine."):
                yield node.lineno, node.module[len("pycopy_engine."):]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pycopy_engine."):
                    yield node.lineno, alias.name[len("pycopy_engine."):]


def test_no_layer_imports_a_higher_one():
    bad = []
    files = list(PKG.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        rel = path.relative_to(PKG).parts
        if rel[0] not in RANK:
            continue
        mine = RANK[rel[0]]
        for line, mod in _imports(path):
            layer = mod.split(".")[0]
            if layer in RANK and RANK[layer] > mine:
                bad.append(f"{path.relative_to(PKG)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_wire_and_core_touch_no_os():
    for layer in ("wire", "core"):
        for path in (PKG / layer).rglob("*.py"):
            text = path.read_text()
            for banned in ("import socket", "time.time(", "time.monotonic(", "import select"):
                assert banned not in text, f"{path.name} uses {banned}"
