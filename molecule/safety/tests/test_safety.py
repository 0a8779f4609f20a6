"""Two online hosts feed one assistant (each tcpcopy with its own -f); after
every container is restarted, with the target's routes removed first,
replication works again with no Ansible run."""

from __future__ import annotations

import time

import pytest
from lab_client import (
    DATA,
    INTERCEPT_PORT,
    ONLINE_PORT,
    TARGET_LOG,
    logged_paths,
    phase,
    send_requests,
)

REQUESTS = 60
ONLINE2 = "10.242.1.14"
UNITS = [
    ("online", "pycopy-tcpcopy.service"),
    ("online2", "pycopy-tcpcopy.service"),
    ("assistant", "pycopy-intercept.service"),
    ("target", "pycopy-testserver-route.service"),
]


def _wait_active(host, unit: str, wait: float = 60) -> str:
    deadline = time.monotonic() + wait
    state = ""
    while time.monotonic() < deadline:
        state = host.run("systemctl is-active %s", unit).stdout.strip()
        if state == "active":
            break
        time.sleep(1)
    return state


def _wait_control_links(assistant, peers: list[str], wait: float = 60) -> str:
    """Established control connections on intercept's port, once every peer has one."""
    deadline = time.monotonic() + wait
    out = ""
    while time.monotonic() < deadline:
        out = assistant.run(
            "ss -Htn state established '( sport = :%s )'", str(INTERCEPT_PORT)
        ).stdout
        if all(f" {p}:" in out for p in peers):
            break
        time.sleep(1)
    return out


@pytest.fixture(scope="module")
def ready(lab):
    """Units active and both tcpcopy instances connected to intercept (after a boot, too)."""
    states = {f"{h}:{u}": _wait_active(lab[h], u) for h, u in UNITS}
    links = _wait_control_links(lab["assistant"], [DATA["online"], ONLINE2])
    return states, links


def test_every_unit_is_active(ready):
    states, _ = ready
    assert all(s == "active" for s in states.values()), states


def test_both_online_hosts_hold_control_connections(ready):
    _, links = ready
    assert f" {DATA['online']}:" in links and f" {ONLINE2}:" in links, links


def test_each_online_host_runs_tcpcopy_with_its_own_port_shift(lab):
    for name, shift in (("online", "1"), ("online2", "2")):
        argv = lab[name].run(
            "cat /proc/$(systemctl show -p MainPID --value pycopy-tcpcopy.service)/cmdline"
        )
        args = argv.stdout.split("\0")
        assert "-f" in args and args[args.index("-f") + 1] == shift, (name, args)


def test_target_routes_the_clients_via_the_assistant(lab, ready):
    # After the restart this route exists only because the unit put it back at boot.
    for client in (DATA["client"], "10.242.1.250"):
        route = lab["target"].run("ip -o route show %s/32", client).stdout
        assert f"via {DATA['assistant']} " in route, (client, route)


@pytest.mark.parametrize("online", [DATA["online"], ONLINE2])
def test_requests_to_each_online_host_reach_the_target(lab, ready, online):
    tag, answers = send_requests(lab["client"], f"http://{online}:{ONLINE_PORT}", REQUESTS)
    assert all(body is not None for body in answers.values()), answers
    lines = logged_paths(lab["target"], TARGET_LOG, tag, REQUESTS, wait=30)
    received = {line.split()[2] for line in lines}
    missing = sorted(set(answers) - received)
    print(
        f"phase {phase()}: target received {len(set(answers) & received)} of {REQUESTS} from {online}"
    )
    assert not missing, (
        f"{len(missing)} of {REQUESTS} requests to {online} never reached the target"
    )
    # Replayed with the client's own address, as TCPCopy does.
    assert {line.split()[3].rsplit(":", 1)[0] for line in lines} == {DATA["client"]}
