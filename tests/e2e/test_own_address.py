"""Own-address mode (``tcpcopy --no-assistant``, issue 10) in a lab that behaves like
a cloud VPC: the bridge drops every frame whose IP source is not the sending
host's own address, and the target has no route for the clients' network.

Classic mode visibly fails there; own-address mode replicates every request,
leaves the online host's own connections alone, and the online host's stack
never answers the target with RST.  The drop rule goes at a clean exit and is
removed by the next start after a SIGKILL.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import time

import pytest

from tests.lab.netns import HOSTS
from tests.lab.services import logged_keys, run_client, sent_keys

from .procs import Proc, intercept, tcpcopy

pytestmark = pytest.mark.lab

N = 1000  # keep-alive requests and short-connection requests each


def _nft(*argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["nft", *argv], input=stdin, capture_output=True, text=True, timeout=20)
    if check and res.returncode != 0:
        raise AssertionError(f"nft {' '.join(argv)}: {res.stderr}")
    return res


@pytest.fixture(scope="module")
def cloud(lab, http_servers):
    """Anti-spoofing on the lab bridge (a bridge-family nft table of the lab's own, in
    the root namespace, matching only the lab's ports) and no route on the target."""
    table = f"{lab.prefix}_antispoof"
    second = second_address(lab)  # a secondary address of online (a VPC "secondary IP")
    lab.add_address("online", second + "/24")
    own = {h: lab.ip[h] for h in HOSTS}
    own["online"] += ", " + second
    rules = "".join(
        f'    iifname "{lab.prefix}-{h[:3]}" ip saddr != {{ {own[h]} }} counter drop comment "{h}"\n'
        for h in HOSTS)
    _nft("-f", "-", stdin=f"table bridge {table} {{\n  chain spoof {{\n"
         "    type filter hook forward priority -200; policy accept;\n"
         f"{rules}  }}\n}}\n")
    lab.run("target", ["ip", "route", "del", lab.ip["client"] + "/32"])
    ino = os.stat(f"/run/netns/{lab.ns['online']}").st_ino
    try:
        yield table
    finally:
        _nft("delete", "table", "bridge", table, check=False)
        with contextlib.suppress(FileNotFoundError):  # tcpcopy's instance lock of that netns
            os.unlink(f"/run/pycopy/noassist-netns{ino}.lock")


def second_address(lab) -> str:
    return lab.ip["online"].rsplit(".", 1)[0] + ".21"


def spoof_drops(table: str, host: str) -> int:
    out = _nft("list", "table", "bridge", table).stdout
    line = next(x for x in out.splitlines() if f'comment "{host}"' in x)
    return int(line.split("packets ")[1].split()[0])


@pytest.fixture()
def logs(http_servers):
    start = {h: len(s.records()) for h, s in http_servers.items()}

    def new(host: str, n: int = 0, timeout: float = 30.0):
        s = http_servers[host]
        recs = s.wait_records(start[host] + n, timeout) if n else s.records()
        return recs[start[host]:]

    return new


def own_address(lab, workdir, name="tcpcopy-own", extra=()):
    return Proc(lab, "online", "tcpcopy",
                ["-x", f"80-{lab.ip['target']}:80", "--no-assistant", *extra], workdir, name)


def rule_present(lab) -> bool:
    return lab.run("online", ["nft", "list", "table", "ip", "pycopy_noassist"],
                   check=False).returncode == 0


def test_classic_mode_fails_behind_anti_spoofing(lab, cloud, logs, workdir):
    assert not lab.run("target", ["ip", "route", "get", lab.ip["client"]]).stdout.count(" via ")
    before = spoof_drops(cloud, "online")
    ic = intercept(lab, workdir, name="intercept-cloud")
    tc = tcpcopy(lab, workdir, name="tcpcopy-classic-cloud")
    try:
        res = run_client(lab, requests=50, connections=2, mode="close", tag="classic")
        assert res["ok"] == 50  # the clients are served by online as ever ...
        assert tc.wait_stat("send_syn", 50) >= 50  # ... and tcpcopy sends its copies ...
        time.sleep(1.0)
        # ... but the bridge drops them all (their source is the client's address)
        assert not [r for r in logs("target") if "/classic/" in r["path"]]
        assert spoof_drops(cloud, "online") - before >= 50
    finally:
        tc.stop()
        ic.stop()


def test_own_address_replicates_everything_without_disturbing_the_host(
        lab, cloud, logs, workdir):
    t, o = lab.ip["target"], lab.ip["online"]
    # RSTs leaving online towards the target that no process sent: the host's
    # stack answering the target (tcpcopy's raw socket has an owner, skuid 0)
    lab.run("online", ["nft", "-f", "-"], input=(
        "table ip pqrst {\n  chain out {\n    type filter hook output priority 0;\n"
        f"    ip daddr {t} tcp flags & rst == rst meta skuid 0 accept\n"
        f"    ip daddr {t} tcp flags & rst == rst counter\n  }}\n}}\n"))
    spoofed_before = spoof_drops(cloud, "online")
    tc = own_address(lab, workdir)
    try:
        assert rule_present(lab)
        own_conns = lab.popen("online", [
            "python3", "-m", "tests.lab.client", "--host", t, "--requests", "300",
            "--connections", "3", "--mode", "close", "--tag", "hostown", "--delay", "0.01",
            "--expect-server", "target", "--out", str(workdir / "hostown.json")])
        ka = run_client(lab, requests=N, connections=8, mode="keepalive", tag="oka")
        sc = run_client(lab, requests=N, connections=8, mode="close", tag="osc")
        assert ka["ok"] == N and sc["ok"] == N, (ka["errors"], sc["errors"])
        assert own_conns.wait(timeout=120) == 0
        sent = sorted(sent_keys(ka) + sent_keys(sc))
        mine = lambda recs: [r for r in recs if "/oka/" in r["path"] or "/osc/" in r["path"]]  # noqa: E731
        deadline = time.monotonic() + 30
        while len(mine(logs("target"))) < 2 * N and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        # nothing was spoofed, and the host's stack never answered the target with RST
        assert spoof_drops(cloud, "online") == spoofed_before
        out = lab.run("online", ["nft", "list", "table", "ip", "pqrst"]).stdout
        line = next(x for x in out.splitlines() if "counter" in x and "skuid" not in x)
        assert " packets 0 " in line, line
        target = mine(logs("target"))
        assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
        assert {r["client_ip"] for r in target} == {o}  # the online host's own address
        ports = {r["client_port"] for r in target}
        lo, hi = map(int, lab.run("online", ["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
                     .stdout.split())
        assert not [p for p in ports if lo <= p <= hi or p < 1024 or p == 80]
        # the host's own connections to the target, made during the run: all answered
        import json

        own = json.loads((workdir / "hostown.json").read_text())
        assert own["ok"] == 300 and not own["failed"], own["errors"]
        hostown = [r for r in logs("target") if "/hostown/" in r["path"]]
        assert len(hostown) == 300 and all(lo <= r["client_port"] <= hi for r in hostown)
        st = tc.stats()
        assert st.get("port_pool_exhausted", 0) == 0
        assert st["sessions_opened"] == 8 + N
    finally:
        code = tc.stop()
        lab.run("online", ["nft", "delete", "table", "ip", "pqrst"], check=False)
    assert code == 0
    assert not rule_present(lab)  # a clean exit removes the drop rule


def test_sigkill_leaves_the_rule_and_the_next_start_removes_it(lab, cloud, workdir):
    tc = own_address(lab, workdir, name="tcpcopy-own-kill")
    assert rule_present(lab)
    tc.proc.send_signal(signal.SIGKILL)
    tc.proc.wait(10)
    assert rule_present(lab)  # nothing ran at exit
    # a hand-made stale table with a different rule: replaced, not added to
    lab.run("online", ["nft", "add", "rule", "ip", "pycopy_noassist", "answers",
                       "tcp", "dport", "9", "drop"])
    tc2 = own_address(lab, workdir, name="tcpcopy-own-restart")
    try:
        assert "removed a stale drop rule" in tc2.log()
        out = lab.run("online", ["nft", "list", "table", "ip", "pycopy_noassist"]).stdout
        assert "dport 9 drop" not in out and out.count(" drop") == 1, out
        # a second instance in the same namespace is refused and leaves the rule alone
        tc3 = Proc(lab, "online", "tcpcopy", ["-x", f"80-{lab.ip['target']}:80",
                                              "--no-assistant"], workdir, "tcpcopy-own-second",
                   ready=False)
        assert tc3.proc.wait(20) == 1
        assert "another own-address tcpcopy runs in this network namespace" in tc3.log()
        tc3.stop()
        assert rule_present(lab) and tc2.proc.poll() is None
    finally:
        assert tc2.stop() == 0
    assert not rule_present(lab)


def test_iptables_form_and_amplification(lab, cloud, logs, workdir, monkeypatch):
    """Where nft is absent the rule is an iptables chain in the raw table; -n 3 gives
    each copy its own pool port."""
    monkeypatch.setenv("PYCOPY_DROP_BACKEND", "iptables")
    tc = own_address(lab, workdir, name="tcpcopy-own-ipt", extra=["-n", "3"])
    try:
        assert not rule_present(lab)
        chain = lab.run("online", ["iptables", "-t", "raw", "-S", "PYCOPY_NOASSIST"]).stdout
        assert chain.count("-j DROP") >= 1 and f"-s {lab.ip['target']}/32" in chain, chain
        res = run_client(lab, requests=200, connections=4, mode="close", tag="oamp")
        assert res["ok"] == 200
        deadline = time.monotonic() + 30
        while (len([r for r in logs("target") if "/oamp/" in r["path"]]) < 600
               and time.monotonic() < deadline):
            time.sleep(0.2)
        target = [r for r in logs("target") if "/oamp/" in r["path"]]
        assert len(target) == 600
        assert len({r["client_port"] for r in target}) == 600  # a pool port per copy
        assert {r["client_ip"] for r in target} == {lab.ip["online"]}
    finally:
        assert tc.stop() == 0
    assert lab.run("online", ["iptables", "-t", "raw", "-S", "PYCOPY_NOASSIST"],
                   check=False).returncode != 0
    assert "PYCOPY_NOASSIST" not in lab.run("online", ["iptables", "-t", "raw", "-S"]).stdout


def _doctor(lab):
    import sys

    res = lab.run("online", [sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "--doctor",
                             "-x", f"80-{lab.ip['target']}:80", "--no-assistant"], check=False)
    return res.returncode, res.stdout + res.stderr


def test_doctor_own_address(lab, cloud, workdir):
    code, out = _doctor(lab)  # before tcpcopy starts: no rule, the stack resets the probe
    assert code == 0, out
    assert "OK   port pool:" in out and f"OK   source {lab.ip['online']}" in out
    assert "WARN drop rule: not installed" in out
    assert "answers it with RST (expected before tcpcopy starts)" in out, out
    tc = own_address(lab, workdir, name="tcpcopy-own-doctor")
    try:
        code, out = _doctor(lab)
        assert code == 0, out
        assert "OK   drop rule: in place (nft table ip pycopy_noassist)" in out
        assert "OK   pool clear of host ports" in out
        assert "is captured here and the host's stack does not answer it" in out, out
    finally:
        assert tc.stop() == 0
    # a stale rule that does not match the target's answers: the probe names it
    lab.run("online", ["nft", "-f", "-"], input=(
        "table ip pycopy_noassist {\n  chain answers {\n"
        "    type filter hook prerouting priority -300;\n    tcp dport 1 drop\n  }\n}\n"))
    try:
        code, out = _doctor(lab)
        assert code == 1, out
        assert "the drop rule does not match the target's answers" in out, out
    finally:
        lab.run("online", ["nft", "delete", "table", "ip", "pycopy_noassist"], check=False)


_PROBE = """
import sys
from pycopy_engine.cli.doctor import DoctorOptions, Report
from pycopy_engine.cli.doctor_own import probe_own
src, tgt, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
rep = Report(sys.stdout)
probe_own(DoctorOptions(), rep, (tgt, 80), src, ports, False)
"""


def test_doctor_probe_steps_over_a_target_time_wait(lab, cloud):
    """A pool port whose 4-tuple the target still holds in TIME_WAIT (tcpcopy used it
    within the last minute) draws a bare ACK, not a SYN-ACK: the doctor takes the next
    port instead of reporting the target unreachable."""
    import sys

    free_port = 20199
    for tw_port in range(20111, 20119):  # a SYN above the TIME_WAIT's sequence reopens it,
        # one below draws a bare ACK: a fresh TIME_WAIT each round, until one does
        # an HTTP/1.0 exchange from tw_port: the server closes first, its socket stays in TIME_WAIT
        lab.run("online", [sys.executable, "-c", (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{lab.ip['online']}', {tw_port})); s.connect(('{lab.ip['target']}', 80))\n"
            "s.sendall(b'GET /tw HTTP/1.0\\r\\n\\r\\n')\n"
            "while s.recv(4096): pass\n"
            "s.close()\n")])
        tw = lab.run("target", ["ss", "-Htn", "state", "time-wait",
                                f"dst {lab.ip['online']}:{tw_port}"]).stdout
        assert tw.strip(), "the lab's server did not close first: no TIME_WAIT to probe into"
        out = lab.run("online", [sys.executable, "-c", _PROBE, lab.ip["online"],
                                 lab.ip["target"], str(tw_port), str(free_port)]).stdout
        assert "no answer" not in out and "FAIL" not in out, out
        if f":{free_port}->" in out:
            break
        assert f":{tw_port}->" in out and "answers it with RST" in out, out
    else:
        raise AssertionError("eight probes into a TIME_WAIT, none answered with a bare ACK")
    assert "answers it with RST" in out, out  # the next port got its SYN-ACK

def test_privileged_steps_manage_the_rule_and_the_replayer_keeps_only_cap_net_raw(
        lab, cloud, logs, workdir):
    import sys

    t = lab.ip["target"]
    state = str(workdir / "noassist-rule.json")
    base = [sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "-x", f"80-{t}:80",
            "--no-assistant", "--rule-state", state]
    only_raw = ["setpriv", "--inh-caps=-all", "--bounding-set=-all,+net_raw"]
    # without CAP_NET_ADMIN, auto mode cannot install the rule: it says how to split
    res = lab.run("online", only_raw + base, check=False)
    assert res.returncode == 1 and "--drop-rule install" in res.stderr, res.stderr
    assert not rule_present(lab)
    res = lab.run("online", base + ["--drop-rule", "install"])  # the unit's ExecStartPre=+
    assert "drop rule installed (nft" in res.stdout and rule_present(lab)
    log = open(workdir / "tcpcopy-external.log", "w")
    stats = workdir / "tcpcopy-external.stats.json"
    p = lab.popen("online", only_raw + base + [
        "--drop-rule", "external", "--stats-json", str(stats), "--stats-interval", "0.2"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not stats.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, (workdir / "tcpcopy-external.log").read_text()
        status = open(f"/proc/{p.pid}/status").read()  # ip netns exec and setpriv exec()
        capeff = int(next(x for x in status.splitlines() if x.startswith("CapEff")).split()[1], 16)
        assert capeff == 1 << 13, hex(capeff)  # CAP_NET_RAW only
        res = run_client(lab, requests=300, connections=4, mode="close", tag="oext")
        assert res["ok"] == 300
        deadline = time.monotonic() + 30
        while (len([r for r in logs("target") if "/oext/" in r["path"]]) < 300
               and time.monotonic() < deadline):
            time.sleep(0.2)
        target = [r for r in logs("target") if "/oext/" in r["path"]]
        assert logged_keys(target) == sent_keys(res)
    finally:
        assert lab.stop(p) == 0
        log.close()
    assert rule_present(lab)  # the replayer leaves the rule to the stop step
    res = lab.run("online", base + ["--drop-rule", "remove"])  # the unit's ExecStopPost=+
    assert "drop rule removed" in res.stdout and not rule_present(lab)



def test_several_own_addresses_share_the_work(lab, cloud, logs, workdir):
    o, o2 = lab.ip["online"], second_address(lab)
    tc = own_address(lab, workdir, name="tcpcopy-own-two", extra=["-c", f"{o},{o2}"])
    try:
        res = run_client(lab, requests=300, connections=4, mode="close", tag="otwo")
        assert res["ok"] == 300
        deadline = time.monotonic() + 30
        while (len([r for r in logs("target") if "/otwo/" in r["path"]]) < 300
               and time.monotonic() < deadline):
            time.sleep(0.2)
        target = [r for r in logs("target") if "/otwo/" in r["path"]]
        assert logged_keys(target) == sent_keys(res)
        by_ip = collections.Counter(r["client_ip"] for r in target)
        assert set(by_ip) == {o, o2} and min(by_ip.values()) >= 100, by_ip  # in turn
    finally:
        assert tc.stop() == 0


def test_iptables_form_after_sigkill(lab, cloud, workdir, monkeypatch):
    monkeypatch.setenv("PYCOPY_DROP_BACKEND", "iptables")

    def jumps() -> int:
        out = lab.run("online", ["iptables", "-t", "raw", "-S", "PREROUTING"]).stdout
        return out.count("-j PYCOPY_NOASSIST")

    tc = own_address(lab, workdir, name="tcpcopy-ipt-kill")
    tc.proc.send_signal(signal.SIGKILL)
    tc.proc.wait(10)
    assert jumps() == 1  # left behind
    tc2 = own_address(lab, workdir, name="tcpcopy-ipt-restart")
    try:
        assert "removed a stale drop rule" in tc2.log()
        assert jumps() == 1  # replaced, not doubled
    finally:
        assert tc2.stop() == 0
    assert jumps() == 0
    assert lab.run("online", ["iptables", "-t", "raw", "-S", "PYCOPY_NOASSIST"],
                   check=False).returncode != 0
