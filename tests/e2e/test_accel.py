"""The optional compiled engine (``make accel``, pycopy_engine/accel.py): built
with mypyc from the unchanged source in a copy of the tree, it passes the
engine's unit tests and replicates real traffic in the lab; a build that no
longer matches its source, or ``PYCOPY_PURE=1``, runs the pure source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.netns import REPO_ROOT

pytestmark = pytest.mark.lab

COPY = ("pycopy_engine", "tests", "bench", "scripts", "pyproject.toml")


def _run(tree: Path, *argv: str, env: dict | None = None, timeout: float = 600):
    return subprocess.run([sys.executable, *argv], cwd=tree, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


def _status(tree: Path, env: dict | None = None) -> dict:
    r = _run(tree, "scripts/build_accel.py", "--status", "--json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        pytest.skip("mypy (mypyc) is not installed: requirements-dev.txt")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    tree = tmp_path_factory.mktemp("accel")
    for name in COPY:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "_accel_manifest.json"))
        else:
            shutil.copy2(src, tree / name)
    r = _run(tree, "scripts/build_accel.py", timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "engine: compiled with mypyc (13 modules)" in r.stdout
    return tree


def test_every_engine_module_is_compiled_from_the_tree_source(built):
    from pycopy_engine import accel

    st = _status(built)
    assert st == {"compiled": list(accel.MODULES), "pure": [], "fallback": None}
    assert not (built / "build").exists()  # mypyc's C went to a temporary folder
    manifest = json.loads((built / "pycopy_engine" / "_accel_manifest.json").read_text())
    assert manifest["cache_tag"] == sys.implementation.cache_tag
    assert sorted(manifest["sources"]) == sorted(accel.MODULES)


def test_the_compiled_engine_passes_the_engine_unit_tests(built):
    """Every unit test but those that replace an engine method (a compiled
    class's methods are read-only)."""
    r = _run(built, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit",
             "-m", "not pure_only", timeout=900)
    assert r.returncode == 0, r.stdout[-4000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


def test_the_compiled_engine_replicates_in_the_lab(built):
    """tcpcopy and intercept of the built tree (the nested run's REPO_ROOT):
    keep-alive and short connections, amplification, byte-exact uploads and
    downloads."""
    r = _run(built, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/e2e/test_replication.py", "-k",
             "keepalive_and_short or amplification or uploads_and_downloads", timeout=900)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "3 passed" in r.stdout, r.stdout[-2000:]
    assert "pycopy: not using the compiled engine" not in r.stdout + r.stderr


def test_pure_on_request_and_when_the_source_changed_since_the_build(built):
    st = _status(built, {"PYCOPY_PURE": "1"})
    assert st["compiled"] == [] and st["fallback"] == "PYCOPY_PURE is set"
    src = built / "pycopy_engine" / "core" / "delay.py"
    text = src.read_text()
    try:
        src.write_text(text + "\n# edited after the build\n")
        r = _run(built, "-m", "pycopy_engine.cli.tcpcopy", "--help")
        assert r.returncode == 0
        assert ("pycopy: not using the compiled engine: source changed since the build:"
                " core/delay.py (rebuild: make accel)") in r.stderr
        st = _status(built)
        assert st["compiled"] == [] and "core/delay.py" in st["fallback"]
    finally:
        src.write_text(text)
    assert _status(built)["pure"] == []


def test_clean_returns_to_pure_python(built):
    r = _run(built, "scripts/build_accel.py", "--clean")
    assert r.returncode == 0 and "removed 14 compiled file(s)" in r.stdout, r.stdout
    st = _status(built)
    assert st["compiled"] == [] and st["fallback"] is None
