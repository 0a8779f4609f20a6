"""Helpers for the Ansible tree's tests: run tools from the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "scripts" / "lab"
CACHE = REPO / ".cache"


def tool_env() -> dict[str, str]:
    """Environment with project-local Ansible and Molecule state."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_HOME=str(CACHE / "ansible"),
        MOLECULE_EPHEMERAL_DIRECTORY=str(CACHE / "molecule"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PY_COLORS="0",
        # the first bundle.yml of a run builds (test_bundle.py forces it); later
        # ones keep that bundle while the engine source and the role are unchanged
        PYCOPY_BUNDLE_REUSE="1",
    )
    return env


def run(cmd: list[str], timeout: float, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run cmd in the repository root; output is captured as text."""
    result = subprocess.run(
        cmd, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{tail(result)}")
    return result


def tail(result: subprocess.CompletedProcess[str], lines: int = 60) -> str:
    out = (result.stdout + "\n" + result.stderr).splitlines()
    return "\n".join(out[-lines:])


def lab_unavailable() -> str | None:
    """Why the nspawn lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the nspawn lab needs root"
    for tool in ("systemd-nspawn", "debootstrap", "ssh", "ansible-playbook"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture()
def nspawn_lab():
    """A freshly booted four-host lab (scripts/lab/up.sh), torn down afterwards."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        run([str(LAB / "up.sh")], timeout=300, check=True)
        yield
    finally:
        run([str(LAB / "down.sh")], timeout=120)
