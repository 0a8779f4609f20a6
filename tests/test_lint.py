"""Lint and types as tests, so the README's one test command covers them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (scripts/install-deps.sh installs it)")
    r = subprocess.run(["ruff", "check", "pycopy_engine", "tests", "bench"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-5000:]


def test_mypy_engine():
    r = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports",
                        "--no-error-summary", "pycopy_engine"], cwd=ROOT, capture_output=True,
                       text=True)
    if "No module named mypy" in r.stderr:
        pytest.skip("mypy is not installed (scripts/install-deps.sh installs it)")
    assert r.returncode == 0, r.stdout[-5000:]
