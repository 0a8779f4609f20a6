"""host_prep's runtime decisions that can run on this machine, for real.

- playbooks/interpreter.yml's raw probe on this Debian 12 machine, then facts
  gathered with the chosen interpreter and the preflight's platform check.
- The bounded wait for a synchronised clock: with no chronyc (this machine runs
  no chronyd and must never set its clock), and with a stand-in chronyc first
  on PATH that prints the documented `chronyc -c tracking` lines of an
  unsynchronised and of a synchronised chronyd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, tail, tool_env

# chronyc -c tracking: reference ID, name, stratum, ref time, system time,
# last offset, RMS offset, frequency, residual freq, skew, root delay,
# root dispersion, update interval, leap status.
UNSYNCED = "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,1.000000000,1.000000000,0.0,Not synchronised"
SYNCED = "C0000201,192.0.2.1,3,1764619200.123456789,-0.000012345,0.000001234,0.000023456,-12.345,0.001,0.012,0.001234567,0.000456789,64.2,Normal"


def playbook(args: list[str], env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        ["ansible-playbook", *args],
        cwd=REPO,
        env={**tool_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(
    not Path("/etc/debian_version").exists(), reason="expects a Debian-family machine"
)
@pytest.mark.parametrize("play", ["local_interpreter.yml", "local_platform.yml"])
def test_interpreter_probe_on_this_machine_and_facts_follow(tmp_path, play):
    """interpreter.yml alone, and the preflight's platform check on a host without facts."""
    out = tmp_path / "chosen.json"
    inventory = tmp_path / "hosts.json"
    host = {"ansible_connection": "local", "ansible_become": False, "t_out": str(out)}
    inventory.write_text(
        json.dumps(
            {
                "all": {"hosts": {"here": host}},
                "online": {"hosts": {"here": None}},
                "target": {"hosts": {"here": None}},
                "assistant": {"hosts": {"here": None}},
            }
        )
    )
    result = playbook(["-i", str(inventory), f"tests/ansible/platforms/{play}"])
    assert result.returncode == 0, tail(result)
    chosen = json.loads(out.read_text())
    # The system python3 (it has the apt bindings), not the Python running Ansible.
    assert chosen["interpreter"] == "/usr/bin/python3"
    assert chosen["python"] == "/usr/bin/python3"
    assert f"here: {chosen['distribution']}" in result.stdout
    assert ": supported" in result.stdout


def fake_chronyc(tmp_path: Path, line: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "chronyc"
    script.write_text(f"#!/bin/sh\necho '{line}'\n")
    script.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def wait(extra: list[str], env: dict[str, str] | None = None):
    args = [
        "-i",
        "localhost,",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        '{"host_prep_chrony_servers": ["192.0.2.1"]}',
        "-e",
        "host_prep_time_sync_timeout=3",
        "-e",
        "host_prep_time_sync_poll=1",
        *extra,
        "tests/ansible/platforms/time_wait.yml",
    ]
    started = time.monotonic()
    result = playbook(args, env=env, timeout=120)
    return result, time.monotonic() - started


def test_unsynchronised_clock_fails_after_the_bound_naming_the_way_out(tmp_path):
    result, elapsed = wait([], env=fake_chronyc(tmp_path, UNSYNCED))
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "The clock of localhost is not synchronised after 3 s" in out, tail(result)
    assert "chrony reached none of its sources (192.0.2.1)" in out
    assert "Not synchronised" in out  # chronyc's own words are shown
    assert "host_prep_time_sync_required=false" in out
    assert elapsed >= 3, elapsed  # it waited for the bound before failing


def test_without_chronyd_the_bound_still_applies(tmp_path):
    if shutil.which("chronyc"):
        probe = subprocess.run(["chronyc", "-c", "tracking"], capture_output=True, text=True)
        if probe.returncode == 0:
            pytest.skip("a chronyd answers on this machine")
    result, elapsed = wait([])
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "The clock of localhost is not synchronised after 3 s" in out, tail(result)
    assert elapsed >= 3, elapsed


def test_lab_setting_turns_the_timeout_into_a_warning(tmp_path):
    result, _ = wait(
        ["-e", "host_prep_time_sync_required=false"], env=fake_chronyc(tmp_path, UNSYNCED)
    )
    assert result.returncode == 0, tail(result)
    assert "WARNING: The clock of localhost is not synchronised after 3 s" in " ".join(
        result.stdout.split()
    )


def test_synchronised_clock_passes_at_once(tmp_path):
    result, elapsed = wait([], env=fake_chronyc(tmp_path, SYNCED))
    assert result.returncode == 0, tail(result)
    assert "localhost: clock synchronised (C0000201,192.0.2.1,3," in result.stdout
    assert "not synchronised" not in result.stdout
    assert elapsed < 30


@pytest.mark.skipif(
    not Path("/etc/debian_version").exists(), reason="expects a Debian-family machine"
)
def test_whole_role_in_check_mode_on_this_machine(tmp_path):
    """Every branch this Debian machine takes runs (firewall probe, SELinux absent, chrony) and nothing changes."""
    marker = Path("/var/lib/pycopy/host_prep-selinux.json")
    existed = marker.exists()
    result = playbook(
        [
            "--check",
            "-i",
            "localhost,",
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            "tests/ansible/platforms/check_local.yml",
        ]
    )
    assert result.returncode == 0, tail(result)
    assert "failed=0" in result.stdout
    assert "SELinux is not present or disabled on localhost" in result.stdout
    assert marker.exists() == existed
