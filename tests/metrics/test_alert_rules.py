"""The Prometheus alert rules shipped in deploy/prometheus, checked by promtool
(Debian's `prometheus` package): syntax, and a unit test of each rule with
synthetic series (deploy/prometheus/pycopy-alerts.test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (apt-get install prometheus)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True,  # type: ignore[list-item]
                          timeout=120)


def test_rules_are_valid():
    r = _promtool("check", "rules", "pycopy-alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 4 rules found" in r.stdout


def test_rules_fire_when_and_only_when_they_should():
    r = _promtool("test", "rules", "pycopy-alerts.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
