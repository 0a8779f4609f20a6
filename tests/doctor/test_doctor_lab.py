"""doctor in a real four-namespace lab: break each thing on purpose, doctor must name it.

Lab prefix ``pyo``, subnet 10.231.3.0/24: client .10, online .11, target .12
(HTTP on port 80), assistant .13 (intercept).  Each test breaks one thing,
checks the FAIL line, then applies the fix command doctor printed (the exact
command, run in that host) and checks that doctor is satisfied again.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netns import Lab, lab_unavailable

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "pyo", "10.231.3"
C, T, A = (f"{SUBNET}.{n}" for n in (10, 12, 13))
DOCTOR = [sys.executable, "-m", "pycopy_engine.cli.doctor"]
STANDIN = str(Path(__file__).with_name("intercept_standin.py"))
GOOD_FILTER = f"tcp and src host {T}"


def intercept_argv(filt: str) -> list[str]:
    """The real intercept when it exists (or PYCOPY_DOCTOR_INTERCEPT=standin)."""
    use_real = os.environ.get("PYCOPY_DOCTOR_INTERCEPT", "real") == "real" and (
        importlib.util.find_spec("pycopy_engine.cli.intercept") is not None
    )
    if use_real:
        return [sys.executable, "-m", "pycopy_engine.cli.intercept", "-i", "eth0", "-F", filt]
    return [sys.executable, STANDIN, "-i", "eth0", "-F", filt]


class World:
    def __init__(self, lab: Lab, log_path: Path) -> None:
        self.lab = lab
        self.log_path = log_path
        self.intercept: subprocess.Popen[bytes] | None = None

    def check_intercept(self) -> None:
        """A dead intercept would make every probe fail for the wrong reason."""
        if self.intercept is not None and self.intercept.poll() is not None:
            raise AssertionError(f"intercept exited: {self.log_path.read_text()[-3000:]}")

    def start_intercept(self, filt: str = GOOD_FILTER) -> None:
        self.stop_intercept()
        self.log = open(self.log_path, "w")
        self.intercept = self.lab.popen(
            "assistant", intercept_argv(filt), stdout=self.log, stderr=subprocess.STDOUT
        )
        for _ in range(100):
            out = self.lab.run("assistant", ["ss", "-Hltn", "sport = :36524"]).stdout
            if "36524" in out:
                return
            assert self.intercept.poll() is None, "intercept exited"
            time.sleep(0.1)
        raise AssertionError("intercept did not start listening")

    def stop_intercept(self) -> None:
        if self.intercept is not None:
            self.lab.stop(self.intercept)
            self.intercept = None
            self.log.close()

    def doctor(self, host: str, *args: str) -> tuple[int, list[tuple[str, str, str]]]:
        res = self.lab.run(host, [*DOCTOR, *args], check=False, timeout=60)
        assert res.returncode in (0, 1), res.stderr
        lines = []
        for line in res.stdout.splitlines():
            status, rest = line.split(None, 1)
            check, _, text = rest.partition(": ")
            lines.append((status, check, text))
        return res.returncode, lines

    def fix(self, host: str, line: tuple[str, str, str]) -> None:
        """Run the command after '->' in ``host``, exactly as doctor printed it."""
        cmd = line[2].rsplit(" -> ", 1)[1]
        for part in cmd.split("; "):
            self.lab.run(host, shlex.split(part), timeout=20)

    def online(self, *extra: str) -> tuple[int, list[tuple[str, str, str]]]:
        self.check_intercept()
        return self.doctor("online", "--role", "online", "-s", A, "-x", f"80-{T}:80", "-c", C,
                           *extra)  # fmt: skip

    def assistant(self, filt: str = GOOD_FILTER, *extra: str) -> tuple[int, list]:
        return self.doctor("assistant", "--role", "assistant", "-i", "eth0", "-F", filt,
                           "-x", f"{T}:80", "-c", C, *extra)  # fmt: skip

    def target(self, *extra: str) -> tuple[int, list[tuple[str, str, str]]]:
        return self.doctor("target", "--role", "target", "--client", C, "--assistant", A,
                           "-x", f"{T}:80", *extra)  # fmt: skip


def only(lines: list[tuple[str, str, str]], status: str, check_prefix: str) -> tuple[str, str, str]:
    found = [ln for ln in lines if ln[0] == status and ln[1].startswith(check_prefix)]
    assert len(found) == 1, (status, check_prefix, lines)
    return found[0]


def fails(lines: list[tuple[str, str, str]]) -> list[str]:
    return [ln[1] for ln in lines if ln[0] == "FAIL"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    log_path = tmp_path_factory.mktemp("pyo-doctor") / "intercept.log"
    with Lab(PREFIX, SUBNET) as lab:
        lab.popen("target", [sys.executable, "-m", "http.server", "80", "--bind", T],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        w = World(lab, log_path)
        w.start_intercept()
        yield w
        w.stop_intercept()


def test_healthy_lab_every_role_is_ok(world: World) -> None:
    rc, lines = world.target()
    assert rc == 0 and not fails(lines), lines
    only(lines, "OK", f"route to {C}")
    only(lines, "OK", "rp_filter eth0")
    rc, lines = world.assistant()
    assert rc == 0 and not fails(lines), lines
    assert "passes the filter" in only(lines, "OK", "probe")[2]
    rc, lines = world.online()
    assert rc == 0 and not fails(lines), lines
    assert "SYN-ACK reported by intercept" in only(lines, "OK", f"probe {C}:")[2]
    only(lines, "OK", f"intercept {A}:36524")


def test_route_removed_on_target(world: World) -> None:
    world.lab.run("target", ["ip", "route", "del", f"{C}/32"])
    try:
        rc, lines = world.target()
        assert rc == 1 and fails(lines) == [f"route to {C}"]
        line = only(lines, "FAIL", f"route to {C}")
        assert f"not via the assistant {A}" in line[2]
        assert line[2].endswith(f"-> ip route replace {C}/32 via {A}")
        rc, lines = world.online()
        probe = only(lines, "FAIL", "probe")
        assert "no SYN-ACK reported by intercept" in probe[2]
        assert f"routing on the target (no route to {C} via {A})" in probe[2]
        rc, lines = world.assistant()
        probe = only(lines, "FAIL", "probe")
        assert f"routing on the target (no route to {C} via {A})" in probe[2]
        world.fix("target", only(world.target()[1], "FAIL", f"route to {C}"))
        assert world.target()[0] == 0
        assert world.online()[0] == 0
    finally:
        world.lab.run("target", ["ip", "route", "replace", f"{C}/32", "via", A])


def test_ip_forward_on_assistant(world: World) -> None:
    world.lab.sysctl("assistant", "net.ipv4.ip_forward", 1)
    try:
        rc, lines = world.assistant()
        assert rc == 1 and fails(lines) == ["ip_forward"]
        line = only(lines, "FAIL", "ip_forward")
        assert "is 1" in line[2] and line[2].endswith("-> sysctl -w net.ipv4.ip_forward=0")
        world.fix("assistant", line)
        rc, lines = world.assistant()
        assert rc == 0 and only(lines, "OK", "ip_forward")
    finally:
        world.lab.sysctl("assistant", "net.ipv4.ip_forward", 0)


def test_wrong_filter(world: World) -> None:
    bad = "tcp and src port 8080"
    rc, lines = world.assistant(bad)
    assert rc == 1 and fails(lines) == ["filter match", only(lines, "FAIL", "probe")[1]]
    assert "does not accept the target's answers" in only(lines, "FAIL", "filter match")[2]
    assert "the SYN-ACK arrived but the filter" in only(lines, "FAIL", "probe")[2]
    rc, lines = world.assistant("tcp and src prot 80")
    assert rc == 1 and "bad filter expression" in only(lines, "FAIL", "filter")[2]
    # the intercept running with that filter: the online probe names the mismatch
    world.start_intercept(bad)
    try:
        rc, lines = world.online()
        assert rc == 1
        assert "or intercept filter mismatch" in only(lines, "FAIL", "probe")[2]
    finally:
        world.start_intercept()
    assert world.online()[0] == 0


def test_rp_filter_strict_on_target(world: World) -> None:
    lab = world.lab
    for key in ("all", "eth0"):
        lab.sysctl("target", f"net.ipv4.conf.{key}.rp_filter", 1)
    lab.run("target", ["ip", "link", "add", "pyo-up", "type", "veth", "peer", "name", "pyo-up2"])
    try:
        # one interface: strict mode passes (the copies arrive where the route leaves)
        rc, lines = world.target()
        assert rc == 0
        assert "strict mode" in only(lines, "WARN", "rp_filter eth0")[2]
        assert world.online()[0] == 0  # and the probe really gets through
        # copies arriving on another interface than the route to the client: dropped
        lab.run("target", ["ip", "addr", "add", "10.231.33.1/24", "dev", "pyo-up"])
        lab.run("target", ["ip", "link", "set", "pyo-up2", "up"])
        lab.run("target", ["ip", "link", "set", "pyo-up", "up"])
        rc, lines = world.target("--online", "10.231.33.5")
        line = only(lines, "FAIL", "rp_filter pyo-up")
        assert "strict mode drops copies" in line[2]
        world.fix("target", line)
        rc, lines = world.target("--online", "10.231.33.5")
        assert rc == 0 and only(lines, "OK", "rp_filter pyo-up")
    finally:
        lab.run("target", ["ip", "link", "del", "pyo-up"], check=False)
        for key in ("all", "eth0"):
            lab.sysctl("target", f"net.ipv4.conf.{key}.rp_filter", 0)


def test_firewall_drop_on_online_iptables(world: World) -> None:
    rule = ["OUTPUT", "-d", f"{T}/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DROP"]
    world.lab.run("online", ["iptables", "-A", *rule])
    try:
        rc, lines = world.online()
        assert rc == 1
        line = only(lines, "FAIL", "firewall iptables filter OUTPUT")
        assert line[2].endswith(f"-> iptables -t filter -D OUTPUT -d {T}/32 -p tcp -m tcp "
                                "--dport 80 -j DROP")  # fmt: skip
        assert "probe not sent: Operation not permitted" in only(lines, "FAIL", "probe")[2]
        world.fix("online", line)
        assert world.online()[0] == 0
    finally:
        world.lab.run("online", ["iptables", "-D", *rule], check=False)


def test_firewall_drop_on_online_nft(world: World) -> None:
    lab = world.lab
    lab.run("online", ["nft", "add", "table", "inet", "pyo"])
    try:
        lab.run("online", ["nft", "add chain inet pyo out { type filter hook output priority 0; }"])
        lab.run(
            "online", ["nft", f"add rule inet pyo out ip daddr {SUBNET}.0/24 tcp dport 80 drop"]
        )
        rc, lines = world.online()
        line = only(lines, "FAIL", "firewall nft inet pyo out")
        assert "nft delete rule inet pyo out handle" in line[2]
        world.fix("online", line)
        assert world.online()[0] == 0
    finally:
        lab.run("online", ["nft", "delete", "table", "inet", "pyo"], check=False)


def test_service_not_listening_on_target(world: World) -> None:
    rc, lines = world.doctor("online", "--role", "online", "-s", A, "-x", f"{T}:81", "-c", C)
    assert rc == 1
    assert f"nothing listens on {T}:81" in only(lines, "FAIL", "probe")[2]


def test_intercept_not_reachable(world: World) -> None:
    rc, lines = world.online("-p", "36999")
    assert rc == 1
    line = only(lines, "FAIL", f"intercept {A}:36999")
    assert "connection refused" in line[2]
    assert "probe skipped" in only(lines, "WARN", "probe")[2]


def test_missing_cap_net_raw(world: World) -> None:
    drop = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw", "--"]
    res = world.lab.run("online", [*drop, *DOCTOR, "--role", "online", "-s", A, "-x", f"{T}:80",
                                   "-c", C], check=False)  # fmt: skip
    assert res.returncode == 1
    assert any(
        line.startswith("FAIL cap_net_raw: missing") and "setcap cap_net_raw" in line
        for line in res.stdout.splitlines()
    ), res.stdout


def test_tcpcopy_and_intercept_doctor_entry_points(world: World) -> None:
    tc = [sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "--doctor"]
    res = world.lab.run("online", [*tc, "-x", f"80-{T}:80", "-s", A, "-c", C], check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SYN-ACK reported by intercept" in res.stdout
    ic = [sys.executable, "-m", "pycopy_engine.cli.intercept", "--doctor"]
    res = world.lab.run("assistant", [*ic, "-i", "eth0", "-F", GOOD_FILTER], check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK   ip_forward: 0" in res.stdout and "OK   capture eth0" in res.stdout
    world.lab.sysctl("assistant", "net.ipv4.ip_forward", 1)
    try:
        res = world.lab.run("assistant", [*ic, "-i", "eth0", "-F", GOOD_FILTER], check=False)
        assert res.returncode == 1 and "FAIL ip_forward: is 1" in res.stdout
    finally:
        world.lab.sysctl("assistant", "net.ipv4.ip_forward", 0)


def tcpcopy_doctor(world: World, *extra: str) -> tuple[int, list[tuple[str, str, str]]]:
    world.check_intercept()
    tc = ["-m", "pycopy_engine.cli.tcpcopy", "--doctor", "-x", f"80-{T}:80", "-s", A]
    res = world.lab.run("online", [sys.executable, *tc, *extra], check=False, timeout=60)
    assert res.returncode in (0, 1), res.stdout + res.stderr
    lines = []
    for line in res.stdout.splitlines():
        status, rest = line.split(None, 1)
        check, _, text = rest.partition(": ")
        lines.append((status, check, text))
    return res.returncode, lines


def test_tcpcopy_doctor_without_a_probe_address_says_how_to_enable_the_probe(world: World) -> None:
    rc, lines = tcpcopy_doctor(world)
    assert rc == 0, lines
    probe = [ln for ln in lines if ln[1].startswith("probe")]
    assert len(probe) == 1 and probe[0][0] == "WARN", lines  # one line, and no probe sent
    assert "--probe-client" in probe[0][2] and "pycopy_probe_address" in probe[0][2]


def test_tcpcopy_doctor_probes_from_probe_client_and_finds_a_missing_route(world: World) -> None:
    rc, lines = tcpcopy_doctor(world, "--probe-client", C)
    assert rc == 0 and "SYN-ACK reported by intercept" in only(lines, "OK", f"probe {C}:")[2]
    world.lab.run("target", ["ip", "route", "del", f"{C}/32"])
    try:
        rc, lines = tcpcopy_doctor(world, "--probe-client", C)
        assert rc == 1
        line = only(lines, "FAIL", f"probe {C}:")
        assert f"routing on the target (no route to {C} via {A})" in line[2]
    finally:
        world.lab.run("target", ["ip", "route", "replace", f"{C}/32", "via", A])
    # -c also gives the probe its address; --probe-client wins over it
    rc, lines = tcpcopy_doctor(world, "-c", C)
    assert rc == 0 and only(lines, "OK", f"probe {C}:")
    rc, lines = tcpcopy_doctor(world, "-c", f"{SUBNET}.77", "--probe-client", C)  # .77: no route
    assert rc == 0 and only(lines, "OK", f"probe {C}:")


def test_doctor_never_probes_from_a_real_client(world: World) -> None:
    """The client host is talking to online right now: its address is refused as
    the probe's source (a missing route would send it the target's SYN-ACK)."""
    online = f"{SUBNET}.11"
    talker = world.lab.popen("client", [sys.executable, "-c", (
        "import socket, time\n"
        "end = time.time() + 30\n"
        "while time.time() < end:\n"
        "    try:\n"
        f"        socket.create_connection(('{online}', 80), timeout=0.2).close()\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(0.02)\n")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rc, lines = tcpcopy_doctor(world, "--probe-client", C)
        line = only(lines, "WARN", "probe")
        assert f"{C} is a real client" in line[2], lines
        assert not [ln for ln in lines if ln[1].startswith(f"probe {C}:")]  # nothing sent
    finally:
        world.lab.stop(talker)
    rc, lines = tcpcopy_doctor(world, "--probe-client", C)  # quiet again: probed
    assert rc == 0 and only(lines, "OK", f"probe {C}:")
