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


# What wire/ and core/ may import: the standard library's pure modules (no
# clock, no sockets, no files, no processes) and the package's own lower parts.
PURE_STDLIB = {
    "__future__", "abc", "array", "binascii", "bisect", "collections", "collections.abc",
    "dataclasses", "enum", "functools", "hashlib", "heapq", "hmac", "ipaddress", "itertools",
    "json",  # parsing only (issue 9: JSON answers summarised by field)
    "logging", "math", "operator", "random", "re", "struct", "typing", "zlib",
}
OWN = ("wire", "core", "errors")
BANNED_CALLS = {"open", "print", "input", "exec", "eval", "__import__", "compile", "breakpoint"}
BANNED_ATTRS = {"basicConfig", "addHandler"}  # logging is used, never configured


def _sans_io_violations(source: str, rel: Path):
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name.startswith("pycopy_engine."):
                    if name.split(".")[1] not in OWN:
                        yield f"{rel}:{node.lineno} imports {name}"
                elif name not in PURE_STDLIB:
                    yield f"{rel}:{node.lineno} imports {name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                top = (parts + (node.module or "").split("."))[0]
                if top not in OWN:
                    yield f"{rel}:{node.lineno} imports {'.' * node.level}{node.module}"
            elif (node.module or "").startswith("pycopy_engine."):
                if node.module.split(".")[1] not in OWN:  # type: ignore[union-attr]
                    yield f"{rel}:{node.lineno} imports {node.module}"
            elif node.module not in PURE_STDLIB:
                yield f"{rel}:{node.lineno} imports {node.module}"
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in BANNED_CALLS:
                yield f"{rel}:{node.lineno} calls {f.id}()"
            if isinstance(f, ast.Attribute) and f.attr in BANNED_ATTRS:
                yield f"{rel}:{node.lineno} calls .{f.attr}()"


def test_wire_and_core_are_sans_io():
    """wire/ and core/ import only pure standard-library modules and the
    package's wire/core/errors: no socket, select, os, time, threading, …"""
    files = [p for layer in ("wire", "core") for p in (PKG / layer).rglob("*.py")]
    assert len(files) >= 10
    bad = [v for p in files for v in _sans_io_violations(p.read_text(), p.relative_to(PKG))]
    assert not bad, "\n".join(bad)


def test_sans_io_check_catches_what_it_is_for():
    """The check itself: each kind of OS access in a core module is reported."""
    samples = {
        "import time": "imports time", "from socket import socket": "imports socket",
        "import os.path": "imports os.path", "from ..io import loop": "imports ..io",
        "from pycopy_engine.cli import common": "imports pycopy_engine.cli",
        "open('x')": "calls open()", "logging.basicConfig()": "calls .basicConfig()",
        "import selectors": "imports selectors", "import threading": "imports threading",
    }
    for src, want in samples.items():
        found = list(_sans_io_violations(src + "\n", Path("core/probe.py")))
        assert any(want in v for v in found), (src, found)


# the engine's interface for the command-line layer
ENGINE_API = {"on_capture", "on_record", "on_timer", "take_output", "next_deadline", "shutdown",
              "active_sessions", "time_wait_count", "registrations", "begin_round", "cfg",
              "stats", "memory", "memory_due", "observe_rss",
              # components the cli installs and reads: issue 12, issue 10
              "brake", "health", "rng", "use_port_pool",
              # --compare (issue 9): which flow a copy belongs to, is a flow copied
              "flow_of", "replicated"}


def test_cli_uses_only_the_engines_interface():
    """cli/ reaches the engine only through ENGINE_API (no sessions, tables,
    counters of its internals), and never a session at all."""
    bad = []
    for path in (PKG / "cli").rglob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = {"engine"}
        for node in ast.walk(tree):  # eng = self.engine
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "engine"):
                aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            v = node.value
            owner = v.attr if isinstance(v, ast.Attribute) else v.id if isinstance(v, ast.Name) else None
            if owner in aliases and node.attr not in ENGINE_API:
                bad.append(f"{path.name}:{node.lineno} uses engine.{node.attr}")
        src = path.read_text()
        if "core.session" in src:
            bad.append(f"{path.name} imports the session module")
    assert not bad, "\n".join(bad)
