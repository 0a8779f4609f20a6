"""tcpcopy --compare end to end in the four-namespace lab: the online server's
answers captured on online, the target's through intercept's negotiated
extension, one JSON Lines record per request with both."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.services import run_client

from .procs import intercept, tcpcopy

pytestmark = pytest.mark.lab


def read_records(d: Path) -> list:
    out = []
    for f in sorted(d.glob("compare-*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def test_each_request_recorded_with_online_and_target_answers(lab, workdir, logs):
    out = workdir / "compare-run"
    ic = intercept(lab, workdir, name="intercept-cmp")
    tc = tcpcopy(lab, workdir, extra=["--compare", str(out)], name="tcpcopy-cmp")
    try:
        ka = run_client(lab, requests=120, connections=4, mode="keepalive", kind="dyn",
                        tag="cmpka")
        sc = run_client(lab, requests=60, connections=4, mode="close", kind="download",
                        download_size=30000, tag="cmpsc")
        gk = run_client(lab, requests=40, connections=2, mode="keepalive", kind="upload",
                        upload_size=5000, tag="cmpup")
        sl = run_client(lab, requests=20, connections=2, mode="keepalive", kind="slow",
                        tag="cmpsl")
        nf = run_client(lab, requests=20, connections=2, mode="close", kind="notfound",
                        tag="cmpnf")
        assert ka["ok"] == 120 and sc["ok"] == 60 and gk["ok"] == 40, (ka, sc, gk)
        assert sl["ok"] == 20 and nf["ok"] == 20, (sl["errors"], nf["errors"])
        n = 260
        online = logs("online", n)
        target = logs("target", n, timeout=20)
        # every record is written once all answers are in (no timeout expected here)
        assert tc.wait_stat("compare_records", n, timeout=15) >= n
        assert "capturing whole answers for --compare" in ic.log()
        tc.stop()
        deadline = time.monotonic() + 10
        while "whole-answer capture stopped" not in ic.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "whole-answer capture stopped" in ic.log()  # only while a tcpcopy asks
    finally:
        tc.stop()
        ic.stop()
    st = tc.stats()
    recs = [r for r in read_records(out) if "cmp" in (r.get("req") or {}).get("path", "")]
    assert len(recs) == n, (len(recs), st)
    assert st["compare_records"] == n and st["compare_timeouts"] == 0
    tlabel = "%s:80" % lab.ip["target"]
    by_path = {h: {r["path"]: r for r in recs_} for h, recs_ in (("online", online),
                                                                 ("target", target))}
    differ = 0
    for r in recs:
        assert set(r["answers"]) == {"online", tlabel}, r
        assert r["flow"].startswith(lab.ip["client"] + ":")
        assert r["proto"] == "http" and "errors" not in r
        path = r["req"]["path"]
        for host, label in (("online", "online"), ("target", tlabel)):
            a = r["answers"][label]
            sent = by_path[host][path]
            assert a is not None and "error" not in a, (label, r)
            assert a["status"] == sent["status"] and a["size"] == sent["resp_len"], (label, r)
            assert 0 <= a["first"] <= a["last"] < 5000
        if r["answers"]["online"]["size"] != r["answers"][tlabel]["size"]:
            differ += 1  # /dyn/: each server picks its own size
        if "/delay/60/" in path:  # latency: 60 ms on both, measured on each side
            for label in ("online", tlabel):
                assert 59.0 <= r["answers"][label]["first"] < 200.0, (label, r)
        if "/status/404/" in path:
            assert r["answers"]["online"]["status"] == r["answers"][tlabel]["status"] == 404
        if "/cmpup/" in path:
            assert r["answers"]["online"]["fields"]["server"] == "online"
            assert r["answers"][tlabel]["fields"]["server"] == "target"
    assert differ > 60  # the target's answers are the target's own, not copies of online's
    # each request once; a client port reused by a later connection (the server
    # closes first) is another ``conn`` with the same flow text, numbered from 0
    assert len({r["req"]["path"] for r in recs}) == n
    assert len({(r["flow"], r["conn"], r["n"]) for r in recs}) == n
    assert {r["n"] for r in recs if "cmpsc" in r["req"]["path"]} == {0}
    assert time.time() - 120 < min(r["t"] for r in recs) <= max(r["t"] for r in recs) < time.time()


def test_without_compare_no_extension_is_spoken(lab, workdir, logs):
    """A tcpcopy without --compare speaks 1.0 only: intercept never opens the
    whole-answer capture and sends no extension frame."""
    ic = intercept(lab, workdir, name="intercept-plain")
    tc = tcpcopy(lab, workdir, name="tcpcopy-plain")
    try:
        res = run_client(lab, requests=30, connections=2, mode="keepalive", tag="plain10")
        assert res["ok"] == 30
        logs("target", 30)
        assert tc.wait_stat("resp_content", 30) >= 30
        ist, tst = ic.stats(), tc.stats()
        assert ist.get("ext_requests", 0) == 0 and ist.get("ext_items_sent", 0) == 0
        assert tst.get("ext_items", 0) == 0 and tst.get("compare_records", 0) == 0
        assert "whole answers" not in ic.log()
    finally:
        tc.stop()
        ic.stop()


def test_two_copies_each_answer_recorded(lab, workdir, logs):
    """-n 2: two copies of each session to the target; each record carries the
    online answer and both copies' answers ("ip:port" and "ip:port#1")."""
    out = workdir / "compare-n2"
    ic = intercept(lab, workdir, name="intercept-n2")
    tc = tcpcopy(lab, workdir, extra=["--compare", str(out), "-n", "2"], name="tcpcopy-n2")
    try:
        res = run_client(lab, requests=40, connections=2, mode="keepalive", kind="notfound",
                         tag="cmpn2")
        assert res["ok"] == 40, res["errors"]
        logs("target", 80)
        assert tc.wait_stat("compare_records", 40, timeout=15) >= 40
    finally:
        tc.stop()
        ic.stop()
    recs = [r for r in read_records(out) if "cmpn2" in r["req"]["path"]]
    t = "%s:80" % lab.ip["target"]
    assert len(recs) == 40
    for r in recs:
        assert set(r["answers"]) == {"online", t, t + "#1"}, r
        assert all(a is not None and a["status"] == 404 for a in r["answers"].values()), r


def test_connections_older_than_tcpcopy_are_joined_request_by_request(lab, http_servers, workdir):
    """Keep-alive connections already busy when tcpcopy --compare starts (a
    redeploy under live traffic): the comparer's capture may see requests
    the engine's capture did not (it opens first); each record still joins
    a request with the online and the target answer to that same request."""
    out = workdir / "compare-older"
    ic = intercept(lab, workdir, name="intercept-older")
    client = lab.popen("client", [sys.executable, "-m", "tests.lab.client", "--host",
                                  lab.ip["online"], "--requests", "600", "--connections", "3",
                                  "--mode", "keepalive", "--kind", "api", "--delay", "0.01",
                                  "--tag", "73"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.7)  # the connections are open and busy
        tc = tcpcopy(lab, workdir, extra=["--compare", str(out)], name="tcpcopy-older")
        try:
            assert client.wait(60) == 0, client.stdout.read().split(b'"errors"')[-1][:1500]
            time.sleep(1.0)
        finally:
            tc.stop()
    finally:
        if client.poll() is None:
            lab.stop(client)
        ic.stop()
    st = tc.stats()
    t = "%s:80" % lab.ip["target"]
    recs = [r for r in read_records(out) if "/api/" in (r.get("req") or {}).get("path", "")]
    both = [r for r in recs if r["answers"]["online"] and r["answers"].get(t)]
    print(f"\nolder connections: {len(recs)} records, {len(both)} with both answers, "
          f"requests seen by one side only: {st.get('compare_before_copy', 0)}, segments "
          f"dropped: {st.get('compare_skipped_before_copy', 0)}")
    assert len(both) > 300, (len(recs), st)
    for r in both:
        ident = int(r["req"]["path"].rsplit("/", 1)[1])
        kind = r["req"]["path"].split("/")[2]
        for label in ("online", t):
            fields = r["answers"][label]["fields"]
            assert (fields["id"], fields["kind"]) == (ident, kind), (label, r)
