"""A deploy that fails on the target leaves no tcpcopy running anywhere.

On the booted nspawn lab (scripts/lab), one lab for the whole module, in
order: a failure in a play of the target's own (its data link is down, so the
route via the assistant cannot be set) on fresh hosts; then a good deploy;
then redeploys while tcpcopy runs: a failure on the target alone in a play
all hosts share, and a target that becomes unreachable after the preflight.
Each run must fail, and afterwards no host runs tcpcopy (stopped and
disabled, so a reboot does not bring it back either).
"""

from __future__ import annotations

import pytest

from .conftest import LAB, lab_unavailable, run, tail

pytestmark = pytest.mark.molecule

SSH = ["ssh", "-i", "/var/lib/pycopy-lab/pcm/ssh/id_ed25519", "-o", "BatchMode=yes",
       "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR"]  # fmt: skip
ONLINE, TARGET, ASSISTANT = "10.242.0.11", "10.242.0.12", "10.242.0.13"
REPLAY = ["ansible-playbook", "-i", "inventory/lab", "playbooks/replay.yml"]


def on(host: str, command: str) -> str:
    return run([*SSH, f"root@{host}", command], timeout=60).stdout.strip()


def tcpcopy_state() -> tuple[str, str]:
    """(is-active, is-enabled) of tcpcopy on the online host."""
    out = on(
        ONLINE,
        "systemctl is-active pycopy-tcpcopy.service; systemctl is-enabled pycopy-tcpcopy.service",
    )
    lines = (out.splitlines() + ["", ""])[:2]
    return lines[0], lines[1]


def start_tcpcopy_as_a_previous_deploy_left_it() -> None:
    on(ONLINE, "systemctl enable --now pycopy-tcpcopy.service")
    assert tcpcopy_state() == ("active", "enabled")


@pytest.fixture(scope="module")
def lab():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        run([str(LAB / "up.sh")], timeout=300, check=True)
        run(["ansible-playbook", "-i", "inventory/lab", "molecule/default/prepare.yml"], timeout=900,
            check=True)  # fmt: skip
        yield
    finally:
        run([str(LAB / "down.sh")], timeout=120)


@pytest.fixture()
def host_vars(tmp_path):
    """An extra inventory source setting variables of single lab hosts."""

    def write(text: str) -> list[str]:
        path = tmp_path / "overlay.yml"
        path.write_text(text)
        return ["-i", str(path)]

    return write


def test_failure_in_the_targets_own_play_starts_nothing(lab):
    on(TARGET, "ip link set eth1 down")
    try:
        result = run(REPLAY, timeout=900)
    finally:
        on(TARGET, "ip link set eth1 up")
    out = result.stdout + result.stderr
    assert result.returncode != 0, tail(result)
    assert "DEPLOY FAILED" in out, tail(result)
    assert "tcpcopy stopped and disabled on: lab-online" in " ".join(out.split())
    # Nothing after the route play ran: intercept and tcpcopy were never started.
    assert "TASK [intercept : Write the intercept unit]" not in out
    assert "TASK [tcpcopy : " not in out
    assert tcpcopy_state()[0] != "active"


def test_a_good_deploy_replicates(lab):
    result = run(REPLAY, timeout=900)
    assert result.returncode == 0, tail(result)
    assert "target received 20 of 20 probe requests" in result.stdout
    assert tcpcopy_state() == ("active", "enabled")


def main_pid(host: str, unit: str) -> str:
    return on(host, f"systemctl show -p MainPID --value {unit}")


def test_an_engine_change_restarts_intercept_and_tcpcopy(lab):
    # pycopy_engine_changed is the fact replay.yml records when pycopy_engine
    # notifies "pycopy engine changed"; set here as pycopy_engine would.
    before = (
        main_pid(ASSISTANT, "pycopy-intercept.service"),
        main_pid(ONLINE, "pycopy-tcpcopy.service"),
    )
    result = run(
        [*REPLAY, "--tags", "intercept,tcpcopy", "-e", "pycopy_engine_changed=true"], timeout=900
    )
    assert result.returncode == 0, tail(result)
    after = (
        main_pid(ASSISTANT, "pycopy-intercept.service"),
        main_pid(ONLINE, "pycopy-tcpcopy.service"),
    )
    assert "0" not in after and all(a != b for a, b in zip(before, after)), (before, after)
    assert "RUNNING HANDLER [intercept : Restart intercept]" in result.stdout
    assert "RUNNING HANDLER [tcpcopy : Restart tcpcopy]" in result.stdout
    # Without the change, nothing restarts.
    again = run([*REPLAY, "--tags", "intercept,tcpcopy"], timeout=900)
    assert again.returncode == 0, tail(again)
    assert (
        main_pid(ASSISTANT, "pycopy-intercept.service"),
        main_pid(ONLINE, "pycopy-tcpcopy.service"),
    ) == after


def test_failure_on_the_target_in_a_shared_play_stops_tcpcopy(lab, host_vars):
    start_tcpcopy_as_a_previous_deploy_left_it()
    # The target alone cannot stage the bundle (its directory's parent is a file).
    extra = host_vars(
        "all:\n  hosts:\n    lab-target:\n      offline_bundle_dest: /etc/hostname/bundle\n"
    )
    result = run([*REPLAY[:3], *extra, REPLAY[3]], timeout=900)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, tail(result)
    assert "DEPLOY FAILED: task 'Create the bundle directory' failed on lab-target" in out, tail(
        result
    )
    assert "tcpcopy stopped and disabled on: lab-online" in out
    assert "No replication is left running by this run" in out
    assert tcpcopy_state() == ("inactive", "disabled")


def test_target_unreachable_after_the_preflight_stops_tcpcopy(lab, host_vars):
    start_tcpcopy_as_a_previous_deploy_left_it()
    # The target answers the preflight, then its address leads nowhere.
    extra = host_vars(
        "all:\n  hosts:\n    lab-target:\n"
        "      ansible_host: \"{{ '10.242.0.99' if preflight_passed | default(false) else '10.242.0.12' }}\"\n"
    )
    result = run([*REPLAY[:3], *extra, REPLAY[3]], timeout=900)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, tail(result)
    assert "lab-target : ok=" in out and "unreachable=1" in out, tail(result)
    assert "another host failed or became unreachable" in out, tail(result)
    assert "tcpcopy stopped and disabled on: lab-online" in out
    assert tcpcopy_state() == ("inactive", "disabled")
