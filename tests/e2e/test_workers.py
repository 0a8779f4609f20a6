"""tcpcopy --workers 2 end to end in the four-namespace lab: two replaying
processes sharing an AF_PACKET capture by flow (PACKET_FANOUT), each with its
own sessions and control links to pycopy's intercept, under one supervisor
that serves the merged --metrics and --stats-json."""

from __future__ import annotations

import collections
import os
import re
import signal
import time
import urllib.request

import pytest

from tests.lab.services import logged_keys, run_client, sent_keys

from .procs import Proc, intercept

pytestmark = pytest.mark.lab

METRICS_PORT = 19390


def _tcpcopy_workers(lab, workdir, name: str, extra: list) -> Proc:
    o, t, a = lab.ip["online"], lab.ip["target"], lab.ip["assistant"]
    tc = Proc(lab, "online", "tcpcopy",
              ["-x", f"{o}:80-{t}:80", "-s", a, "-i", "eth0", "--workers", "2",
               "--metrics", f"127.0.0.1:{METRICS_PORT}", *extra], workdir, name)
    _wait(lambda: "all 2 workers ready" in tc.log(), what="workers ready", proc=tc)
    return tc


def _wait(cond, timeout: float = 20.0, what: str = "condition", proc: Proc | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited {proc.proc.returncode}: {proc.log()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" +
                         (f": {proc.log()[-3000:]}" if proc is not None else ""))


def _doc(tc: Proc) -> dict:
    import json

    for _ in range(20):
        try:
            return json.loads(tc.stats_path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    return {}


def _scrape(lab) -> str:
    with lab.inside("online"):
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
            return r.read().decode()


def _metric(text: str, series: str) -> float:
    m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert m, f"{series} not in /metrics"
    return float(m.group(1))


def _settled(tc: Proc, key: str, want: int) -> dict:
    """The JSON document once the merged ``key`` reached ``want`` and the
    per-worker figures add up to it."""
    def ok():
        d = _doc(tc)
        per = d.get("per_worker", {})
        if d.get("counters", {}).get(key) == want and \
                sum(w["counters"].get(key, 0) for w in per.values()) == want:
            return d
        return None
    return _wait(ok, what=f"{key} == {want}", proc=tc)


@pytest.mark.parametrize("intercept_workers", [1, 2])
def test_two_workers_replicate_every_request_once_with_merged_metrics(lab, workdir, http_servers,
                                                                      logs, intercept_workers):
    """Also against an intercept with two workers of its own: each tcpcopy
    worker's links may be held by either intercept worker."""
    ic = intercept(lab, workdir, name=f"intercept-w2-{intercept_workers}",
                   extra=["--workers", str(intercept_workers)])
    tc = _tcpcopy_workers(lab, workdir, f"tcpcopy-w2-{intercept_workers}", [])
    try:
        ka = run_client(lab, requests=600, connections=8, mode="keepalive",
                        tag=f"wka{intercept_workers}")
        sc = run_client(lab, requests=600, connections=8, mode="close",
                        tag=f"wsc{intercept_workers}")
        assert ka["ok"] == 600 and sc["ok"] == 600, (ka["errors"][:3], sc["errors"][:3])
        sent = sorted(sent_keys(ka) + sent_keys(sc))
        target = logs("target", 1200, timeout=30)
        time.sleep(0.5)  # a duplicate would arrive now
        target = logs("target")
        assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
        doc = _settled(tc, "sessions_opened", 608)
        per = doc["per_worker"]
        assert set(per) == {"0", "1"}
        for w in per.values():  # both workers carried traffic, over their own links
            assert w["up"] and w["counters"]["requests_sent"] > 0
            assert w["counters"]["control_links_up"] == 2  # -C 2 to the one intercept
        assert doc["counters"]["requests_sent"] == sum(
            w["counters"]["requests_sent"] for w in per.values())
        text = _scrape(lab)
        assert _metric(text, "pycopy_tcpcopy_sessions_opened_total") == 608
        assert _metric(text, "pycopy_tcpcopy_requests_sent_total") == doc["counters"]["requests_sent"]
        assert _metric(text, "pycopy_tcpcopy_control_links_up") == 4
        assert _metric(text, "pycopy_tcpcopy_workers") == 2
        assert _metric(text, 'pycopy_tcpcopy_worker_up{worker="0"}') == 1
        assert _metric(text, 'pycopy_tcpcopy_worker_up{worker="1"}') == 1
        # each worker's client ports are its own class: worker i's have (port - 1024) % 2 == i
        ports = {r["client_port"] % 2 for r in target}
        assert ports == {0, 1}
        log = tc.log()
        assert "[worker 0]" in log and "[worker 1]" in log
    finally:
        code = tc.stop()
        ic.stop()
    assert code == 0, tc.log()[-3000:]
    assert "died unexpectedly" not in tc.log()


def test_sigkill_of_a_worker_stops_the_other_and_tcpcopy_fails(lab, workdir, http_servers):
    ic = intercept(lab, workdir, name="intercept-wkill")
    tc = _tcpcopy_workers(lab, workdir, "tcpcopy-wkill", [])
    try:
        res = run_client(lab, requests=50, connections=4, mode="close", tag="wkill")
        assert res["ok"] == 50
        per = _wait(lambda: _doc(tc).get("per_worker"), what="per-worker stats", proc=tc)
        victim, other = per["0"]["pid"], per["1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        assert tc.proc.wait(15) == 128 + signal.SIGKILL
        _wait(lambda: not os.path.exists(f"/proc/{other}"), timeout=5, what="worker 1 gone")
        log = tc.log()
        assert f"worker 0 (pid {victim}) died unexpectedly: killed by signal 9 (SIGKILL)" in log
        assert f"stopping the other 1 worker(s) (pids {other})" in log
    finally:
        tc.stop()
        ic.stop()


def test_amplification_with_two_workers_never_collides(lab, workdir, http_servers, logs):
    ic = intercept(lab, workdir, name="intercept-wamp")
    tc = _tcpcopy_workers(lab, workdir, "tcpcopy-wamp", ["-n", "3"])
    try:
        res = run_client(lab, requests=200, connections=8, mode="close", tag="wamp")
        assert res["ok"] == 200
        target = logs("target", 600, timeout=30)
        time.sleep(0.5)
        target = logs("target")
        assert len(target) == 600
        by_path = collections.Counter(r["path"] for r in target)
        assert set(by_path.values()) == {3}
        copies = collections.defaultdict(set)
        for r in target:
            copies[r["path"]].add((r["client_ip"], r["client_port"]))
        assert all(len(v) == 3 for v in copies.values())
        # the three copies of a session come from one worker, whose ports are its own
        # class ((port - 1024) % 2 == worker index): both classes carried sessions
        parity = {path: {p % 2 for _ip, p in v} for path, v in copies.items()}
        assert all(len(v) == 1 for v in parity.values())
        assert set().union(*parity.values()) == {0, 1}
        doc = _settled(tc, "sessions_opened", 600)
        assert all(w["counters"]["sessions_opened"] > 0 for w in doc["per_worker"].values())
    finally:
        tc.stop()
        ic.stop()


def test_intercept_restart_with_L_every_worker_reconnects(lab, workdir, http_servers, logs):
    ic = intercept(lab, workdir, name="intercept-wL1")
    tc = _tcpcopy_workers(lab, workdir, "tcpcopy-wL", ["-L"])
    try:
        ic.stop()
        _wait(lambda: (_doc(tc).get("counters", {}).get("control_links_up", 1) == 0), proc=tc,
              what="links down")
        assert tc.proc.poll() is None  # -L: the workers keep running without intercept
        ic = intercept(lab, workdir, name="intercept-wL2")
        doc = _wait(lambda: (lambda d: d if all(
            w["counters"].get("control_links_up") == 2 and w["counters"].get("control_reconnects",
                                                                              0) >= 2
            for w in d.get("per_worker", {}).values()) else None)(_doc(tc)),
            what="both workers reconnected", proc=tc)
        assert doc["counters"]["control_links_up"] == 4
        res = run_client(lab, requests=100, connections=4, mode="close", tag="wL2")
        assert res["ok"] == 100
        target = logs("target", 100, timeout=30)
        assert logged_keys([r for r in target if "/wL2/" in r["path"]]) == sent_keys(res)
    finally:
        tc.stop()
        ic.stop()


def test_without_L_losing_intercept_stops_every_worker_with_status_1(lab, workdir, http_servers):
    ic = intercept(lab, workdir, name="intercept-wnoL")
    tc = _tcpcopy_workers(lab, workdir, "tcpcopy-wnoL", [])
    try:
        ic.stop()
        assert tc.proc.wait(20) == 1
        log = tc.log()
        assert "all intercept connections lost; exiting" in log
        assert "died unexpectedly: exit status 1" in log
    finally:
        tc.stop()


def test_delay_with_two_workers_holds_every_request_in_both(lab, workdir, http_servers, logs):
    """--delay 50ms with --workers 2: each worker holds its own flows' packets
    (the servers' logs are the clock: a copy without the delay comes ~1 ms
    after online, so 40 ms leaves room for either server's scheduling)."""
    ic = intercept(lab, workdir, name="intercept-w2-delay")
    tc = _tcpcopy_workers(lab, workdir, "tcpcopy-w2-delay", ["--delay", "50ms"])
    try:
        ka = run_client(lab, requests=200, connections=4, mode="keepalive", tag="wdlk", delay=0.01)
        sc = run_client(lab, requests=100, connections=4, mode="close", tag="wdlc", delay=0.01)
        assert ka["ok"] == 200 and sc["ok"] == 100, (ka["errors"][:3], sc["errors"][:3])
        online = {r["path"]: r["time"] for r in logs("online", 300) if "/wdl" in r["path"]}
        target = {r["path"]: r["time"] for r in logs("target", 300, timeout=30)
                  if "/wdl" in r["path"]}
        doc = _settled(tc, "requests_sent", 300)
    finally:
        code = tc.stop()
        ic.stop()
    assert code == 0, tc.log()[-3000:]
    assert set(target) == set(online) and len(online) == 300
    lags = sorted(target[p] - online[p] for p in online)
    print(f"\n--workers 2 --delay 50ms: target later by min {lags[0] * 1e3:.1f} ms, "
          f"median {lags[150] * 1e3:.1f} ms, p90 {lags[269] * 1e3:.1f} ms, max {lags[-1] * 1e3:.1f} ms")
    assert lags[0] >= 0.040 and lags[150] >= 0.050
    for w in doc["per_worker"].values():  # both workers delayed traffic of their own
        assert w["counters"]["requests_sent"] > 0
