"""End to end in the four-namespace lab: real HTTP servers, real clients, real
raw sockets, pycopy's tcpcopy on online and intercept on the assistant."""

from __future__ import annotations

import collections
import subprocess
import time

import pytest

from tests.lab.services import logged_keys, run_client, sent_keys

from .procs import Proc, intercept, tcpcopy

pytestmark = pytest.mark.lab


@pytest.fixture()
def replication(lab, workdir):
    procs = []

    def start(tc_extra=None, ic_extra=None):
        ic = intercept(lab, workdir, extra=ic_extra)
        procs.append(ic)
        tc = tcpcopy(lab, workdir, extra=tc_extra)
        procs.append(tc)
        return ic, tc

    yield start
    for p in reversed(procs):
        p.stop()


def settle(logs, host: str, n: int, timeout: float = 20.0):
    """Wait until ``host`` has logged n new requests, then a little longer for stragglers."""
    logs(host, n, timeout)
    time.sleep(0.5)
    return logs(host)


def test_keepalive_and_short_connections_all_requests_replicated(lab, replication, logs):
    ic, tc = replication()
    ka = run_client(lab, requests=1000, connections=8, mode="keepalive", tag="ka")
    sc = run_client(lab, requests=1000, connections=8, mode="close", tag="sc")
    assert ka["ok"] == 1000 and sc["ok"] == 1000, (ka["errors"], sc["errors"])
    sent = sorted(sent_keys(ka) + sent_keys(sc))
    online = logs("online", 2000)
    target = settle(logs, "target", 2000)
    assert logged_keys(online) == sent
    assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
    st = tc.stats()
    assert st["sessions_opened"] == 1008 and st.get("rst_sent:handshake_timeout", 0) == 0


def test_amplification_each_request_three_times_from_distinct_ports(lab, replication, logs):
    replication(tc_extra=["-n", "3"])
    res = run_client(lab, requests=300, connections=6, mode="close", tag="amp")
    assert res["ok"] == 300
    target = settle(logs, "target", 900)
    assert len(target) == 900
    by_key = collections.Counter((r["method"], r["path"]) for r in target)
    assert set(by_key.values()) == {3}
    copies = collections.defaultdict(set)
    for r in target:
        copies[r["path"]].add((r["client_ip"], r["client_port"]))
    assert all(len(v) == 3 for v in copies.values())  # each copy from its own client port


def test_sampling_half_of_sessions_all_or_nothing(lab, replication, logs):
    replication(tc_extra=["-r", "50"])
    short = run_client(lab, requests=400, connections=8, mode="close", tag="r50")
    keep = run_client(lab, requests=300, connections=30, mode="keepalive", tag="r50k")
    assert short["ok"] == 400 and keep["ok"] == 300
    time.sleep(2)
    online = logs("online")
    target = logs("target")
    short_target = [r for r in target if "/r50/" in r["path"]]
    assert 0.40 * 400 <= len(short_target) <= 0.60 * 400, len(short_target)
    per_conn_online = collections.Counter(r["client_port"] for r in online if "/r50k/" in r["path"])
    per_conn_target = collections.Counter(r["client_port"] for r in target if "/r50k/" in r["path"])
    for port, n in per_conn_target.items():
        assert per_conn_online[port] == n  # a session is replayed whole or not at all
    assert 0 < len(per_conn_target) < len(per_conn_online)


def test_fake_client_range_routed_via_assistant(lab, replication, logs):
    base = lab.ip["client"].rsplit(".", 1)[0]
    fake = [f"{base}.{i}" for i in (200, 201, 202)]
    for ip in fake:
        lab.add_route("target", f"{ip}/32", lab.ip["assistant"])
    replication(tc_extra=["-c", ",".join(fake)])
    res = run_client(lab, requests=200, connections=4, mode="close", tag="fakec")
    assert res["ok"] == 200
    target = settle(logs, "target", 200)
    assert logged_keys(target) == sent_keys(res)
    assert {r["client_ip"] for r in target} <= set(fake)


def test_connection_open_before_tcpcopy_gets_later_requests(lab, replication, logs, workdir):
    ic = intercept(lab, workdir, name="intercept-mid")
    try:
        client = lab.popen("client", [
            "python3", "-m", "tests.lab.client", "--host", lab.ip["online"], "--requests", "30",
            "--connections", "1", "--mode", "keepalive", "--delay", "0.1", "--tag", "mid",
            "--out", str(workdir / "mid.json")])
        time.sleep(1.0)  # about ten requests go before tcpcopy exists
        started = time.time()
        tc = tcpcopy(lab, workdir, name="tcpcopy-mid")
        ready = time.time()
        client.wait(timeout=30)
        time.sleep(1.0)
        online = [r for r in logs("online") if "/mid/" in r["path"]]
        target = [r for r in logs("target") if "/mid/" in r["path"]]
        after = [r for r in online if r["time"] > ready + 0.2]
        assert len(after) >= 10
        got = {r["path"] for r in target}
        assert {r["path"] for r in after} <= got
        assert not [r for r in target if r["path"] in {o["path"] for o in online if o["time"] < started}]
        assert tc.stats()["sessions_fake_syn"] == 1
        tc.stop()
    finally:
        ic.stop()


def test_client_never_receives_a_packet_from_the_target(lab, replication, logs):
    t = lab.ip["target"]
    lab.run("client", ["iptables", "-I", "INPUT", "-s", t, "-j", "ACCEPT"])
    try:
        replication()
        res = run_client(lab, requests=300, connections=4, mode="keepalive", tag="leak")
        assert res["ok"] == 300
        settle(logs, "target", 300)
        out = lab.run("client", ["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout
        line = next(x for x in out.splitlines() if t in x)
        assert int(line.split()[0]) == 0, line
        # and the target really answered, towards the assistant
        assert logs("target") and len(logs("target")) == 300
    finally:
        lab.run("client", ["iptables", "-D", "INPUT", "-s", t, "-j", "ACCEPT"], check=False)


def test_uploads_and_downloads_byte_exact(lab, replication, logs):
    ic, tc = replication()
    up = run_client(lab, requests=20, connections=2, mode="keepalive", kind="upload", tag="up")
    down = run_client(lab, requests=10, connections=2, mode="keepalive", kind="download", tag="dn")
    assert up["ok"] == 20 and down["ok"] == 10
    target = settle(logs, "target", 30)
    assert logged_keys(target) == sorted(sent_keys(up) + sent_keys(down))
    assert all(r["body_len"] == 100 * 1024 for r in target if r["method"] == "POST")
    time.sleep(0.5)
    st = tc.stats()
    # the target sent every downloaded byte, and tcpcopy acknowledged them
    assert st["resp_bytes"] >= 10 * (1 << 20)
    assert st.get("sessions_failed:idle_timeout", 0) == 0


def test_intercept_restart_with_L_resumes(lab, workdir, logs):
    ic = intercept(lab, workdir, name="intercept-r1")
    tc = tcpcopy(lab, workdir, extra=["-L"], name="tcpcopy-L")
    try:
        first = run_client(lab, requests=100, connections=4, mode="close", tag="L1")
        settle(logs, "target", 100)
        ic.stop()
        time.sleep(1.0)
        assert tc.proc.poll() is None  # -L: still running without intercept
        ic = intercept(lab, workdir, name="intercept-r2")
        deadline = time.monotonic() + 20
        while tc.stats().get("control_reconnects", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tc.wait_stat("control_reconnects", 2) >= 2
        second = run_client(lab, requests=100, connections=4, mode="close", tag="L2")
        target = settle(logs, "target", 200)
        assert logged_keys([r for r in target if "/L2/" in r["path"]]) == sent_keys(second)
        assert first["ok"] == 100
        assert "lost" in tc.log()
    finally:
        tc.stop()
        ic.stop()


def test_intercept_unreachable_exits_1_with_message(lab, workdir):
    p = Proc(lab, "online", "tcpcopy", ["-x", f"80-{lab.ip['target']}:80", "-s",
                                        lab.ip["assistant"]], workdir, "tcpcopy-noic", ready=False)
    code = p.proc.wait(timeout=20)
    assert code == 1
    assert f"cannot connect to intercept {lab.ip['assistant']}:36524" in p.log()
    p.stop()


def test_bad_option_exits_2_naming_it(lab):
    r = subprocess.run(["python3", "-m", "pycopy_engine.cli.tcpcopy", "-x", "80-1.2.3:80", "-s",
                        "10.0.0.1"], capture_output=True, text=True)
    assert r.returncode == 2 and "-x" in r.stderr and "80-1.2.3:80" in r.stderr
    r = subprocess.run(["python3", "-m", "pycopy_engine.cli.intercept", "-i", "eth0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "-F" in r.stderr
