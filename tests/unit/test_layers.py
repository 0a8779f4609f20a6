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


# What the sans-IO layers may import: pure computation only.  Anything else (socket,
# select, os, time, logging, threading, ctypes, sys, ...) fails with its name; a new
# pure module is added here on purpose, after a look at what it does.
PURE_STDLIB = {"__future__", "bisect", "collections", "dataclasses", "enum", "functools",
               "hashlib", "heapq", "hmac", "ipaddress", "itertools", "math", "random",
               "struct", "typing", "zlib"}
IO_BUILTINS = {"open", "print", "input", "exec", "eval", "__import__", "breakpoint"}


def _all_imports(path: Path):
    """(line, top-level module) of every import, relative ones resolved to the package."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield node.lineno, "pycopy_engine"
            else:
                yield node.lineno, node.module or ""


def test_wire_and_core_import_nothing_that_touches_the_os():
    bad = []
    files = [p for layer in ("wire", "core") for p in (PKG / layer).rglob("*.py")]
    assert len(files) >= 8
    for path in files:
        for line, mod in _all_imports(path):
            top = mod.split(".")[0]
            if top == "pycopy_engine":
                layer = mod.split(".")[1] if mod.count(".") else ""
                if layer in RANK and RANK[layer] > RANK["core"]:
                    bad.append(f"{path.relative_to(PKG)}:{line} imports {mod}")
                continue
            if top not in PURE_STDLIB:
                bad.append(f"{path.relative_to(PKG)}:{line} imports {mod}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id in IO_BUILTINS:
                bad.append(f"{path.relative_to(PKG)}:{node.lineno} uses {node.id}")
    assert not bad, "\n".join(bad)
