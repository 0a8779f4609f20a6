"""``tcpcopy --tee`` in the four-namespace lab: every session copied to two targets.

The second target is a second HTTP server on the target host, on a secondary
address of its own (``<subnet>.22:8080``); the target host's route to the
clients via the assistant carries both targets' answers, and intercept's
filter takes both source ports.  The dead target is made by dropping every
packet to it with iptables in the target namespace (a black hole: no SYN-ACK,
no RST), which the other target must not notice.

Each test rewrites the client address (``-c``) to addresses of its own, routed
via the assistant on the target: the lab's client reuses its ports from test
to test, and a copy on a 4-tuple the target still holds in TIME_WAIT from an
earlier test is delayed (a retried SYN, ``rst_sent:stale_target_conn``) or
lost, which is not what these tests are about.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import statistics
import time
from typing import Any, Dict

import pytest

from tests.lab.services import HttpServerProc, logged_keys, run_client, sent_keys

from .procs import Proc

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def second(lab, lab_workdir):
    """The second target: ``<subnet>.22:8080`` on the target host."""
    ip = lab.ip["target"].rsplit(".", 1)[0] + ".22"
    lab.add_address("target", ip + "/24")
    srv = HttpServerProc(lab, "target", lab_workdir, port=8080, name="target2",
                         extra=("--bind", ip))
    try:
        yield ip, srv
    finally:
        srv.stop()


@pytest.fixture()
def tee(lab, workdir, http_servers, second):
    """Start intercept (both targets' answers) and tcpcopy --tee; read new log records."""
    ip2, srv2 = second
    servers = {"online": http_servers["online"], "t1": http_servers["target"], "t2": srv2}
    start = {k: len(s.records()) for k, s in servers.items()}
    procs = []

    def run(extra=(), name="tc-tee", assistant=True):
        x = f"80-{lab.ip['target']}:80,80-{ip2}:8080"
        if assistant:
            procs.append(Proc(lab, "assistant", "intercept",
                              ["-i", "eth0", "-F", "tcp and (src port 80 or src port 8080)"],
                              workdir, name + "-ic"))
            args = ["-x", x, "--tee", "-s", lab.ip["assistant"], *extra]
        else:
            args = ["-x", x, "--tee", "--no-assistant", *extra]
        tc = Proc(lab, "online", "tcpcopy", args, workdir, name)
        procs.append(tc)
        return tc

    def new(key: str, tag: str, n: int = 0, timeout: float = 20.0):
        s = servers[key]
        deadline = time.monotonic() + timeout
        while True:
            recs = [r for r in s.records()[start[key]:] if f"/{tag}/" in r["path"]]
            if len(recs) >= n or time.monotonic() > deadline:
                return recs
            time.sleep(0.1)

    run.new = new  # type: ignore[attr-defined]
    yield run
    for p in reversed(procs):
        p.stop()


def fake_clients(lab, *octets: int) -> str:
    """``-c`` addresses of the clients' network, routed via the assistant on the target."""
    ips = [lab.ip["client"].rsplit(".", 1)[0] + f".{o}" for o in octets]
    for ip in ips:
        lab.add_route("target", ip + "/32", lab.ip["assistant"])
    return ",".join(ips)


def stats_after(tc: Proc, since: float, timeout: float = 10.0) -> Dict[str, Any]:
    """tcpcopy's counters from a --stats-json snapshot written after ``since`` (time.time())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc = json.loads(tc.stats_path.read_text())
            if doc.get("time", 0) >= since:
                return doc["counters"]
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no statistics newer than {since} from {tc.name}")


def wait_closed(tc: Proc, timeout: float = 10.0) -> Dict[str, Any]:
    """The counters once tcpcopy has no copy left open (the clients closed theirs)."""
    since = time.time()
    deadline = time.monotonic() + timeout
    while True:
        st = stats_after(tc, since)
        if st.get("sessions_active") == 0 or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def test_a_dead_target_leaves_the_other_at_100_percent(lab, tee, second):
    ip2, _srv = second
    drop = ["INPUT", "-d", ip2, "-p", "tcp", "--dport", "8080", "-j", "DROP"]
    lab.run("target", ["iptables", "-I", *drop])
    try:
        tc = tee(["-c", fake_clients(lab, 201)], name="tc-tee-dead")
        sc = run_client(lab, requests=300, connections=6, mode="close", tag="dsc")
        ka = run_client(lab, requests=300, connections=6, mode="keepalive", tag="dka")
        assert sc["ok"] == 300 and ka["ok"] == 300
        online = tee.new("online", "dsc", 300) + tee.new("online", "dka", 300)
        t1 = tee.new("t1", "dsc", 300) + tee.new("t1", "dka", 300)
        assert logged_keys(t1) == sorted(sent_keys(sc) + sent_keys(ka)), f"{len(t1)} of 600"
        assert tee.new("t2", "dsc") == [] and tee.new("t2", "dka") == []
        # nothing on the live target waited for the dead one: a wait would be at least
        # one SYN retransmission (1 s)
        when = {r["path"]: r["time"] for r in online}
        lag = sorted(r["time"] - when[r["path"]] for r in t1)
        t1n, t2n = f"{lab.ip['target']}:80", f"{ip2}:8080"
        tc.wait_stat(f"requests_completed:target={t1n}", 600)
        tc.wait_stat(f"brake_trips:target={t2n}", 1)  # judged 1.5 s after a SYN
        st = stats_after(tc, time.time())
        assert st[f"brake_trips:target={t2n}"] >= 1 and st.get(f"brake_trips:target={t1n}", 0) == 0
        assert st[f"requests_completed:target={t1n}"] == st[f"requests_captured:target={t1n}"] == 600
        assert st[f"requests_captured:target={t2n}"] == 600
        assert st[f"requests_completed:target={t2n}"] == 0
        assert st[f"health_replication:target={t1n}"] == 1.0
        assert st[f"health_replication:target={t2n}"] == 0.0
        log = tc.log()
        assert f"brake engaged for target {t2n}" in log
        assert f"brake engaged for target {t1n}" not in log
        assert statistics.median(lag) < 0.1 and lag[-1] < 1.0, (
            statistics.median(lag), lag[-1], st.get("rst_sent:stale_target_conn"))
    finally:
        lab.run("target", ["iptables", "-D", *drop], check=False)


def test_every_session_to_both_targets_n_copies_each_on_own_ports(lab, tee):
    clients = fake_clients(lab, 202, 203, 205)
    tc = tee(["-n", "2", "-c", clients])
    ka = run_client(lab, requests=200, connections=4, mode="keepalive", tag="tka")
    sc = run_client(lab, requests=200, connections=4, mode="close", tag="tsc")
    assert ka["ok"] == 200 and sc["ok"] == 200, (ka["errors"], sc["errors"])
    sent = sorted(sent_keys(ka) + sent_keys(sc))
    ports = collections.defaultdict(set)
    addrs = {}
    for key in ("t1", "t2"):
        got = tee.new(key, "tka", 400) + tee.new(key, "tsc", 400)
        assert logged_keys(got) == sorted(sent * 2), f"{key} has {len(got)} of {2 * len(sent)}"
        for r in got:
            ports[r["path"]].add((r["client_ip"], r["client_port"]))
        addrs[key] = sorted((r["path"], r["client_ip"]) for r in got)
    # each request: 2 copies x 2 targets, four sessions, four client ip:ports
    assert {len(v) for v in ports.values()} == {4}
    # -c per target: copy i of a session comes from the same address at both targets
    # (the client's -c slot and the next one: three addresses, so that copies 2 and 3
    # would show a third one if the targets' copies rotated through -c as -n copies do)
    assert addrs["t1"] == addrs["t2"]
    assert {ip for _p, ip in addrs["t1"]} == set(clients.split(",")[:2])
    st = wait_closed(tc)
    assert st["sessions_opened"] == st["sessions_closed"] == 2 * 2 * (4 + 200)
    assert logged_keys(tee.new("t1", "tka") + tee.new("t1", "tsc")) == sorted(sent * 2)  # no extra


def test_sampling_picks_the_same_sessions_for_both_targets(lab, tee):
    tc = tee(["-r", "50", "-c", fake_clients(lab, 204)], name="tc-tee-r")
    res = run_client(lab, requests=300, connections=6, mode="close", tag="tr")
    assert res["ok"] == 300
    st = wait_closed(tc)  # every copy done: every target closed, every copy with it
    assert st["sessions_active"] == 0 and st["drop:sampled_out"] > 0
    kept = st["sessions_opened"] // 2  # one request per session, two copies of each
    assert st["sessions_opened"] == st["sessions_closed"] == 2 * kept
    assert 0.35 * 300 <= kept <= 0.65 * 300, kept
    # (the servers flush their logs every 100 ms: wait for the records, then compare)
    p1 = sorted(r["path"] for r in tee.new("t1", "tr", kept))
    p2 = sorted(r["path"] for r in tee.new("t2", "tr", kept))
    assert len(p1) == kept and p1 == p2


def test_own_address_mode_tees_from_pool_ports(lab, tee):
    ino = os.stat("/run/netns/" + lab.ns["online"]).st_ino
    lock = f"/run/pycopy/noassist-netns{ino}.lock"
    tc = tee(name="tc-tee-own", assistant=False)
    res = run_client(lab, requests=100, connections=4, mode="close", tag="town")
    assert res["ok"] == 100
    got = {k: tee.new(k, "town", 100) for k in ("t1", "t2")}
    for recs in got.values():
        assert logged_keys(recs) == sent_keys(res)
        assert {r["client_ip"] for r in recs} == {lab.ip["online"]}
    ports = [r["client_port"] for recs in got.values() for r in recs]
    assert len(set(ports)) == 200  # every copy its own pool port
    assert tc.wait_stat("sessions_opened", 200) == 200
    assert tc.stop() == 0  # a clean exit: the drop rule goes with it
    assert lab.run("online", ["nft", "list", "table", "ip", "pycopy_noassist"],
                   check=False).returncode != 0
    with contextlib.suppress(FileNotFoundError):  # tcpcopy's instance lock of that netns
        os.unlink(lock)


def test_tee_and_sampling_with_two_workers(lab, tee):
    """--tee -r 50 --workers 2: the sampled sessions reach both targets, each
    request once, whichever worker its flow landed on; both workers worked;
    the merged counters add up as with one process."""
    online = lab.ip["online"]
    tc = tee(["-c", fake_clients(lab, 231), "-i", "eth0", "-F",
              f"tcp and dst host {online} and dst port 80", "--workers", "2", "-r", "50"],
             name="tc-tee-workers")
    deadline = time.monotonic() + 20
    while "all 2 workers ready" not in tc.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    res = run_client(lab, requests=300, connections=6, mode="close", tag="twr")
    assert res["ok"] == 300
    st = wait_closed(tc)
    assert st["sessions_active"] == 0 and st["drop:sampled_out"] > 0
    kept = st["sessions_opened"] // 2
    assert st["sessions_opened"] == st["sessions_closed"] == 2 * kept
    assert 0.35 * 300 <= kept <= 0.65 * 300, kept
    p1 = sorted(r["path"] for r in tee.new("t1", "twr", kept))
    p2 = sorted(r["path"] for r in tee.new("t2", "twr", kept))
    assert len(p1) == kept and p1 == p2 and len(set(p1)) == kept
    doc = json.loads(tc.stats_path.read_text())
    assert all(w["counters"].get("sessions_opened", 0) > 0 for w in doc["per_worker"].values())
