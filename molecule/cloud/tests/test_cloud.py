"""The cloud topology (own-address mode): replication through a bridge that drops
spoofed frames, with no assistant and nothing on the target but its service.

Phase "running" (after converge): requests sent to the online host reach the
target from the online host's own address, the drop rule is in place (installed
by the unit's privileged step: tcpcopy itself holds only CAP_NET_RAW), and the
online host's stack never answered the target's answers with RST.
Phase "stopped" (after playbooks/stop.yml): the drop rule is gone.
"""

from __future__ import annotations

import subprocess

import pytest
from lab_client import DATA, ONLINE_PORT, TARGET_LOG, logged_paths, phase, send_requests

REQUESTS = 100
UNIT = "pycopy-tcpcopy.service"
CAP_NET_RAW = 1 << 13
ANTISPOOF_TABLE = "pcm_antispoof"  # scripts/lab/up.sh with PCM_LAB_ANTISPOOF=1
RULE_STATE = "/run/pycopy/noassist-rule.json"

running = pytest.mark.skipif(phase() != "running", reason="deployment stopped (side_effect ran)")
stopped = pytest.mark.skipif(phase() != "stopped", reason="deployment running")


def spoof_drops(host: str) -> int:
    """Frames from `host`'s data port dropped by the bridge for a foreign IPv4 source."""
    out = subprocess.run(
        ["nft", "list", "table", "bridge", ANTISPOOF_TABLE],
        capture_output=True, text=True, timeout=20, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if f'comment "{host}"' in x)
    return int(line.split("packets ")[1].split()[0])


def out_rsts(online) -> int:
    """TCP RSTs the online host's stack sent (Tcp OutRsts of its network namespace)."""
    rows = [line.split() for line in online.file("/proc/net/snmp").content_string.splitlines()
            if line.startswith("Tcp:")]  # fmt: skip
    return int(rows[1][rows[0].index("OutRsts")])


def drop_rule(online) -> tuple[str, list[str]]:
    """The installed drop rule: its form and its rule lines (with counters), or ("", [])."""
    if online.exists("nft"):
        res = online.run("nft list table ip pycopy_noassist")
        if res.rc == 0:
            return "nft", [x.strip() for x in res.stdout.splitlines() if " drop" in x]
    res = online.run("iptables -w -t raw -L PYCOPY_NOASSIST -n -v -x")
    if res.rc == 0:
        return "iptables", [x.strip() for x in res.stdout.splitlines() if " DROP " in x]
    return "", []


def dropped_packets(form: str, rules: list[str]) -> int:
    if form == "nft":
        return sum(int(r.split("packets ")[1].split()[0]) for r in rules)
    return sum(int(r.split()[0]) for r in rules)


def local_port_range(online) -> tuple[int, int]:
    lo, hi = online.file("/proc/sys/net/ipv4/ip_local_port_range").content_string.split()
    return int(lo), int(hi)


# ---- phase "running" -------------------------------------------------------------


@pytest.fixture(scope="module")
def replayed(lab):
    """REQUESTS real requests from client to online; what the target logged, and the
    online host's RST and drop counters around them."""
    online = lab["online"]
    rsts_before = out_rsts(online)
    form, rules = drop_rule(online)
    dropped_before = dropped_packets(form, rules)
    spoofed_before = spoof_drops("online")
    tag, answers = send_requests(lab["client"], f"http://{DATA['online']}:{ONLINE_PORT}", REQUESTS)
    lines = logged_paths(lab["target"], TARGET_LOG, tag, REQUESTS, wait=20)
    form, rules = drop_rule(online)
    return {
        "answers": answers,
        "lines": lines,
        "rsts": out_rsts(online) - rsts_before,
        "dropped": dropped_packets(form, rules) - dropped_before,
        "spoofed": spoof_drops("online") - spoofed_before,
    }


@running
def test_requests_reach_the_target_from_the_online_hosts_own_address(lab, replayed):
    answers, lines = replayed["answers"], replayed["lines"]
    assert len(answers) == REQUESTS
    bad = {path: body for path, body in answers.items() if body != f"online {path}\n"}
    assert not bad, f"the client got answers not from online: {list(bad.items())[:3]}"
    received = {line.split()[2] for line in lines}
    missing = sorted(set(answers) - received)
    print(f"cloud: target received {len(set(answers) & received)} of {REQUESTS}"
          f" from {DATA['online']}")  # fmt: skip
    assert not missing, f"{len(missing)} of {REQUESTS} never reached the target: {missing[:5]}"
    clients = {line.split()[3] for line in lines}
    assert {c.rsplit(":", 1)[0] for c in clients} == {DATA["online"]}
    # ports from the pool: outside the range the online host's own connections use
    lo, hi = local_port_range(lab["online"])
    inside = sorted(p for p in (int(c.rsplit(":", 1)[1]) for c in clients) if lo <= p <= hi)
    assert not inside, f"copies used ports of ip_local_port_range {lo}-{hi}: {inside[:5]}"


@running
def test_the_online_hosts_stack_never_answered_the_target(replayed):
    # The target's answers to the pool's ports reached the drop rule (and
    # tcpcopy's capture), not the host's TCP stack: no RST from the stack.
    assert replayed["rsts"] == 0, f"the online host's stack sent {replayed['rsts']} RST(s)"
    assert replayed["dropped"] >= REQUESTS, replayed["dropped"]


@running
def test_drop_rule_in_place_installed_by_the_privileged_step(lab):
    online = lab["online"]
    form, rules = drop_rule(online)
    assert form, "no drop rule (nft table ip pycopy_noassist / iptables raw PYCOPY_NOASSIST)"
    assert rules and all(DATA["target"] in r and DATA["online"] in r for r in rules), rules
    if form == "iptables":
        assert "-A PREROUTING -j PYCOPY_NOASSIST" in online.run("iptables -w -t raw -S").stdout
    assert online.file(RULE_STATE).exists
    unit = online.file(f"/etc/systemd/system/{UNIT}").content_string
    assert "\nExecStartPre=+" in unit and "--drop-rule install" in unit
    assert "\nExecStopPost=+" in unit and "--drop-rule remove" in unit


@running
def test_tcpcopy_runs_own_address_mode_with_only_cap_net_raw(lab):
    online = lab["online"]
    service = online.service(UNIT)
    assert service.is_enabled and service.is_running
    pid = int(online.run("systemctl show -p MainPID --value %s", UNIT).stdout)
    argv = online.file(f"/proc/{pid}/cmdline").content.split(b"\0")
    assert b"--no-assistant" in argv and b"-s" not in argv, argv
    assert argv[argv.index(b"--drop-rule") + 1] == b"external", argv
    status = dict(line.split(":\t", 1)
                  for line in online.file(f"/proc/{pid}/status").content_string.splitlines()
                  if ":\t" in line)  # fmt: skip
    assert int(status["Uid"].split()[0]) == online.user("pycopy-tcpcopy").uid
    assert int(status["CapEff"], 16) == CAP_NET_RAW, status["CapEff"]
    assert int(status["CapBnd"], 16) == CAP_NET_RAW, status["CapBnd"]


@running
def test_nothing_on_the_target_but_its_service(lab):
    target = lab["target"]
    routes = target.run("ip -o -4 route show").stdout.splitlines()
    assert routes and all("proto kernel" in r for r in routes), routes  # no route added
    assert not target.file("/etc/systemd/system/pycopy-testserver-route.service").exists
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth1.rp_filter"):
        assert target.sysctl(key) == 1, key  # prepare.yml's strict value, untouched
    assert not target.file("/etc/sysctl.d/60-pycopy-route.conf").exists


@running
def test_no_spoofed_frame_left_the_online_host(replayed):
    # the bridge dropped none of the online host's frames while it replayed
    assert replayed["spoofed"] == 0


@running
def test_the_lab_bridge_drops_spoofed_frames(lab):
    """The anti-spoofing is real: a UDP datagram from online with the client's
    address as source is dropped on the bridge (and counted)."""
    script = (
        "import socket,struct;"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW);"
        "src,dst=socket.inet_aton('%s'),socket.inet_aton('%s');"
        "p=struct.pack('!BBHHHBBH4s4sHHHH',0x45,0,28,0,0,64,17,0,src,dst,40000,9,8,0);"
        "[s.sendto(p,('%s',0)) for _ in range(3)]"
    ) % (DATA["client"], DATA["target"], DATA["target"])
    before = spoof_drops("online")
    assert lab["online"].run("python3 -c %s", script).rc == 0
    assert spoof_drops("online") - before >= 3


# ---- phase "stopped" -------------------------------------------------------------


@stopped
def test_unit_stopped_and_removed(lab):
    assert not lab["online"].service(UNIT).is_running
    assert not lab["online"].file(f"/etc/systemd/system/{UNIT}").exists


@stopped
def test_drop_rule_removed(lab):
    online = lab["online"]
    assert drop_rule(online) == ("", [])
    assert "PYCOPY_NOASSIST" not in online.run("iptables -w -t raw -S").stdout
    assert not online.file(RULE_STATE).exists


@stopped
def test_traffic_no_longer_replayed(lab):
    tag, answers = send_requests(lab["client"], f"http://{DATA['online']}:{ONLINE_PORT}", 10)
    assert all(body is not None and body.startswith("online ") for body in answers.values())
    assert logged_paths(lab["target"], TARGET_LOG, tag, 1, wait=3) == []
