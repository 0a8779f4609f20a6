"""After converge: replication works and is deployed the way users need it."""

from __future__ import annotations

import datetime

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

pytestmark = pytest.mark.skipif(phase() != "running", reason="deployment stopped (side_effect ran)")

REQUESTS = 100
CAP_NET_RAW = 1 << 13
CAP_NET_ADMIN = 1 << 12


@pytest.fixture(scope="module")
def replayed(lab):
    """Send REQUESTS real requests from client to online; collect what the target logged."""
    tag, answers = send_requests(lab["client"], f"http://{DATA['online']}:{ONLINE_PORT}", REQUESTS)
    lines = logged_paths(lab["target"], TARGET_LOG, tag, REQUESTS, wait=20)
    return answers, lines


def test_all_client_requests_appear_in_the_target_log(replayed):
    answers, lines = replayed
    sent = set(answers)
    received = {line.split()[2] for line in lines}
    missing = sorted(sent - received)
    print(f"target received {len(sent & received)} of {len(sent)} requests")
    assert not missing, (
        f"{len(missing)} of {len(sent)} requests never reached the target: {missing[:5]}"
    )
    # Replayed with the client's own address (TCPCopy keeps the source IP).
    assert {line.split()[3].rsplit(":", 1)[0] for line in lines} == {DATA["client"]}


def test_client_got_only_online_answers(replayed):
    answers, _ = replayed
    assert len(answers) == REQUESTS
    bad = {path: body for path, body in answers.items() if body != f"online {path}\n"}
    assert not bad, f"answers not from online: {list(bad.items())[:3]}"


def test_route_to_client_via_assistant_on_target(lab):
    route = lab["target"].run("ip -o route show %s/32", DATA["client"]).stdout
    assert f"via {DATA['assistant']} " in route
    unit = lab["target"].service("pycopy-testserver-route.service")
    assert unit.is_enabled and unit.is_running  # reapplied at every boot


def test_rp_filter_relaxed_on_target(lab):
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth1.rp_filter"):
        assert lab["target"].sysctl(key) == 0, key
    assert lab["target"].file("/etc/sysctl.d/60-pycopy-route.conf").exists


def test_ip_forward_is_zero_on_assistant(lab):
    assert lab["assistant"].sysctl("net.ipv4.ip_forward") == 0
    persisted = lab["assistant"].file("/etc/sysctl.d/60-pycopy-intercept.conf")
    assert persisted.contains("^net.ipv4.ip_forward = 0$")


@pytest.mark.parametrize(
    ("host", "unit", "user"),
    [
        ("assistant", "pycopy-intercept.service", "pycopy-intercept"),
        ("online", "pycopy-tcpcopy.service", "pycopy-tcpcopy"),
    ],
)
def test_services_run_under_systemd_as_non_root_with_only_net_caps(lab, host, unit, user):
    h = lab[host]
    service = h.service(unit)
    assert service.is_enabled and service.is_running
    pid = int(h.run("systemctl show -p MainPID --value %s", unit).stdout)
    assert pid > 0
    status = dict(
        line.split(":\t", 1)
        for line in h.file(f"/proc/{pid}/status").content_string.splitlines()
        if ":\t" in line
    )
    uid = int(status["Uid"].split()[0])
    assert uid != 0 and uid == h.user(user).uid
    effective = int(status["CapEff"], 16)
    ambient = int(status["CapAmb"], 16)
    assert effective & CAP_NET_RAW and ambient & CAP_NET_RAW
    assert effective & ~(CAP_NET_RAW | CAP_NET_ADMIN) == 0, hex(effective)


def _started_at(host, unit: str) -> datetime.datetime:
    value = host.run(
        "systemctl show --timestamp=us+utc -p ExecMainStartTimestamp --value %s", unit
    ).stdout.strip()
    return datetime.datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S.%f UTC")


def test_intercept_started_before_tcpcopy(lab):
    intercept = _started_at(lab["assistant"], "pycopy-intercept.service")
    tcpcopy = _started_at(lab["online"], "pycopy-tcpcopy.service")
    assert intercept < tcpcopy


def test_tcpcopy_holds_control_connections_to_intercept(lab):
    assert lab["assistant"].socket(f"tcp://0.0.0.0:{INTERCEPT_PORT}").is_listening
    peers = (
        lab["assistant"]
        .run("ss -Htn state established '( sport = :%s )'", str(INTERCEPT_PORT))
        .stdout
    )
    assert f" {DATA['online']}:" in peers


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("assistant", f"-s {DATA['online']}/32 -p tcp -m tcp --dport {INTERCEPT_PORT}"),
        ("target", "-p tcp -m tcp --dport 8080"),
    ],
)
def test_firewall_opens_only_what_is_needed(lab, host, rule):
    # prepare.yml set a dropping INPUT chain; host_prep opened only pycopy's ports.
    rules = lab[host].run("iptables -S INPUT").stdout.splitlines()
    assert "-P INPUT DROP" in rules
    ours = [r for r in rules if "--comment pycopy" in r]
    assert ours == [f"-A INPUT {rule} -m comment --comment pycopy -j ACCEPT"]
