"""The optional compiled engine: the hot modules built with mypyc, in place.

``make accel`` (scripts/build_accel.py) compiles :data:`MODULES` (the packet
parsers and builders, the session engine, intercept's router) from their own
unchanged source with mypyc into extension modules next to the ``.py`` files;
Python then imports the extension first.  Nothing else changes: the pure
Python source stays the reference, the default install and what the test
suite runs; the compiled build is tested against the same engine tests
(tests/e2e/test_accel.py).  The session engine alone runs ~2x faster
compiled (bench/bench_engine.py --cpu).

A build is only used while it matches its source: the build writes
``_accel_manifest.json`` with a hash of each compiled module's ``.py``, and
:func:`guard` (run by the package's ``__init__`` before any engine module is
imported) falls back to the pure source, with a warning, when a ``.py`` no
longer matches (a ``git pull`` after ``make accel``), when the build is for
another interpreter, or when ``PYCOPY_PURE=1`` asks for the source.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

MODULES = (
    "pycopy_engine.wire.tcpip",
    "pycopy_engine.wire.control",
    "pycopy_engine.core.engine",
    "pycopy_engine.core.session",
    "pycopy_engine.core.session_base",
    "pycopy_engine.core.session_target",
    "pycopy_engine.core.session_state",
    "pycopy_engine.core.health",
    "pycopy_engine.core.brake",
    "pycopy_engine.core.router",
    "pycopy_engine.core.mapping",
    "pycopy_engine.core.memory",
    "pycopy_engine.core.delay",
)
GROUP = "pycopy_engine._accel"  # mypyc's shared runtime: pycopy_engine/_accel__mypyc*.so
PKG_DIR = Path(__file__).resolve().parent
MANIFEST = PKG_DIR / "_accel_manifest.json"

_state: Dict[str, Any] = {"reason": None}
_PURE_ASKED = "PYCOPY_PURE is set"


def source_path(module: str) -> Path:
    return PKG_DIR.parent / (module.replace(".", "/") + ".py")


def source_hash(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def built_extensions() -> List[Path]:
    """The compiled files present in the package (any interpreter's)."""
    out: List[Path] = []
    for module in MODULES + (GROUP + "__mypyc",):
        p = PKG_DIR.parent / module.replace(".", "/")
        out.extend(sorted(p.parent.glob(p.name + ".*.so")))
        out.extend(sorted(p.parent.glob(p.name + ".*.pyd")))
    return out


def write_manifest() -> None:
    """After a build: what it was built from, and for which interpreter."""
    MANIFEST.write_text(json.dumps({
        "cache_tag": sys.implementation.cache_tag,
        "sources": {m: source_hash(m) for m in MODULES},
    }, indent=1, sort_keys=True) + "\n")


def _mismatch() -> Optional[str]:
    """Why the build present must not be used, or None when it may."""
    if os.environ.get("PYCOPY_PURE", "") not in ("", "0"):
        return _PURE_ASKED
    try:
        manifest = json.loads(MANIFEST.read_text())
    except FileNotFoundError:
        return "no %s (rebuild: make accel)" % MANIFEST.name
    except ValueError:
        return "%s is not valid JSON (rebuild: make accel)" % MANIFEST.name
    if manifest.get("cache_tag") != sys.implementation.cache_tag:
        return "built for %s, this is %s" % (manifest.get("cache_tag"),
                                             sys.implementation.cache_tag)
    sources = manifest.get("sources") or {}
    changed = ["/".join(m.split(".")[1:]) + ".py" for m in MODULES
               if sources.get(m) != source_hash(m)]
    if changed:
        return "source changed since the build: %s (rebuild: make accel)" % ", ".join(changed)
    return None


class _SourceFirst:
    """A meta-path finder that loads :data:`MODULES` from their ``.py``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MODULES:
            return None
        src = str(source_path(fullname))
        return importlib.util.spec_from_file_location(
            fullname, src, loader=importlib.machinery.SourceFileLoader(fullname, src))


def guard() -> None:
    """Decide, before any compiled module is imported, whether the build
    present may be used; if not, import the pure source (and say why once,
    on stderr: logging is not set up yet)."""
    if not built_extensions():
        return
    reason = _mismatch()
    if reason is None:
        return
    _state["reason"] = reason
    sys.meta_path.insert(0, _SourceFirst())
    if reason != _PURE_ASKED:  # asked for: nothing to warn about
        sys.stderr.write("pycopy: not using the compiled engine: %s\n" % reason)


def status(load: bool = False) -> Dict[str, Any]:
    """Which engine modules run compiled: ``{"compiled": [...], "pure": [...],
    "fallback": reason or None}``, of those this process imported (all of
    them with ``load``)."""
    compiled: List[str] = []
    pure: List[str] = []
    for m in MODULES:
        mod = sys.modules.get(m)
        if mod is None:
            if not load:
                continue
            mod = importlib.import_module(m)
        f = getattr(mod, "__file__", "") or ""
        (compiled if f.endswith((".so", ".pyd")) else pure).append(m)
    return {"compiled": compiled, "pure": pure, "fallback": _state["reason"]}


def describe(load: bool = False) -> str:
    """One line for the start-up log."""
    st = status(load)
    if not st["compiled"]:
        why = st["fallback"]
        return "engine: pure Python" + (" (compiled build not used: %s)" % why if why else "")
    if st["pure"]:
        return "engine: compiled with mypyc, except %s" % ", ".join(st["pure"])
    return "engine: compiled with mypyc (%d modules)" % len(st["compiled"])
