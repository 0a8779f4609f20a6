"""intercept --workers 2 in the four-namespace lab: the answers of a session
are captured by whichever worker the fanout hash picks, its CLIENT_ADD
arrives on the worker holding the tcpcopy link; every request must still be
replayed exactly once, and the cross-worker path must have carried answers."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.lab.services import logged_keys, run_client, sent_keys

from .procs import Proc, intercept, tcpcopy
from .test_interop_c import C_TOOLS, CProc

pytestmark = pytest.mark.lab


@pytest.fixture()
def procs():
    started = []
    yield started
    for p in reversed(started):
        p.stop()


def _mixed(lab, logs, tag: str, n: int = 400):
    """Keep-alive and short connections; (requests sent, the target's log,
    segments the target sent meanwhile)."""
    segs0 = _out_segs(lab)
    ka = run_client(lab, requests=n, connections=8, mode="keepalive", tag=tag + "ka")
    sc = run_client(lab, requests=n, connections=8, mode="close", tag=tag + "sc")
    assert ka["ok"] == n and sc["ok"] == n, (ka["errors"][:3], sc["errors"][:3])
    sent = sorted(sent_keys(ka) + sent_keys(sc))
    assert logged_keys(logs("online", 2 * n)) == sent
    logs("target", 2 * n, 30.0)
    time.sleep(0.5)  # a duplicate would come now
    return sent, logs("target"), _out_segs(lab) - segs0


def _out_segs(lab) -> int:
    """TCP segments the target's stack has sent, retransmissions included (its
    answers, all routed via the assistant)."""
    snmp = lab.run("target", ["cat", "/proc/net/snmp"]).stdout.splitlines()
    head, vals = [ln.split() for ln in snmp if ln.startswith("Tcp:")][:2]
    return int(vals[head.index("OutSegs")]) + int(vals[head.index("RetransSegs")])


def _check(ic, tc, sent, target, segs: int, links: int) -> None:
    assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
    st = ic.wait_stat("records_forwarded", 1)
    assert st > 0, "no answer went from one worker to another: the cross-worker path never ran"
    # every answer the target sent was captured by one worker (not both, not none)
    # and written to a link once (a record lost on the way is covered by a
    # retransmission, so fidelity alone would miss it)
    deadline = time.monotonic() + 5
    while True:
        s = ic.stats()
        if s["records_sent"] == s["resp_packets"] == segs or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (s["resp_packets"], s["records_sent"]) == (segs, segs)
    assert s["workers"] == 2 and s["tcpcopy_links"] == links
    assert s["routes_broadcast"] == s["route_add"] > 0
    assert s.get("drop:forwarded_unroutable", 0) == 0
    if tc is not None:
        assert tc.stats().get("rst_sent:handshake_timeout", 0) == 0


def test_one_link_all_answers_reach_it_through_both_workers(lab, workdir, procs, logs):
    """pycopy tcpcopy with one control link (as a C tcpcopy started with -C 1):
    worker 0 holds the link, worker 1 captures about half the answers."""
    ic = intercept(lab, workdir, extra=["--workers", "2"], name="ic-w2")
    procs.append(ic)
    tc = tcpcopy(lab, workdir, extra=["-C", "1"], name="tc-c1")
    procs.append(tc)
    _check(ic, tc, *_mixed(lab, logs, "w1"), links=1)
    assert ic.stats().get("links_handed_over", 0) == 0


def test_links_spread_over_workers(lab, workdir, procs, logs):
    """tcpcopy -C 2: worker 0 hands the second link to worker 1, so CLIENT_ADDs
    arrive on both workers and answers cross in both directions; each worker
    checks the shared secret of the links it holds."""
    secret = workdir / "secret-w2"
    secret.write_text("correct horse battery staple\n")
    ic = intercept(lab, workdir, extra=["--workers", "2", "--secret-file", str(secret)],
                   name="ic-w2b")
    procs.append(ic)
    bare = Proc(lab, "online", "tcpcopy", ["-x", f"80-{lab.ip['target']}:80", "-s",
                                           lab.ip["assistant"], "-C", "2"], workdir,
                "tc-nosecret-w2", ready=False)
    procs.append(bare)
    assert bare.proc.wait(timeout=20) == 1, bare.log()  # refused by both workers
    assert ic.wait_stat("control_refused:auth", 2) == 2
    tc = tcpcopy(lab, workdir, extra=["-C", "2", "--secret-file", str(secret)], name="tc-c2")
    procs.append(tc)
    _check(ic, tc, *_mixed(lab, logs, "w2"), links=2)
    assert ic.stats()["links_handed_over"] == 2  # one of the refused pair, one of these
    per = json.loads(ic.stats_path.read_text())["per_worker"]
    for w in ("0", "1"):  # each worker wrote to its own link and forwarded to the other's
        assert per[w]["counters"]["records_sent"] > 0, per[w]["counters"]
        assert per[w]["counters"]["records_forwarded"] > 0, per[w]["counters"]


@pytest.mark.skipif(not C_TOOLS, reason="PYCOPY_C_TOOLS is not set: no C tcpcopy to serve")
def test_c_tcpcopy_served_by_two_workers(lab, workdir, procs, logs):
    """The C tcpcopy 1.0 (two links by default, one CLIENT_ADD per session)."""
    ic = intercept(lab, workdir, extra=["--workers", "2"], name="ic-w2-c")
    procs.append(ic)
    t, a = lab.ip["target"], lab.ip["assistant"]
    ctc = CProc(lab, "online", "tcpcopy", ["-x", f"80-{t}:80", "-s", a], workdir,
                "c-tcpcopy-w2", ready_line="connect to remote server")
    procs.append(ctc)
    _check(ic, None, *_mixed(lab, logs, "wc"), links=2)


def test_compare_answers_come_from_the_worker_holding_each_link(lab, workdir, procs, logs):
    """tcpcopy --compare -C 2: each worker holding a link that asks for whole
    answers captures them (no fanout) and sends those of its own routes."""
    out = workdir / "compare-w2"
    ic = intercept(lab, workdir, extra=["--workers", "2"], name="ic-w2-cmp")
    procs.append(ic)
    tc = tcpcopy(lab, workdir, extra=["-C", "2", "--compare", str(out)], name="tc-w2-cmp")
    procs.append(tc)
    ka = run_client(lab, requests=60, connections=4, mode="keepalive", kind="dyn", tag="wcka")
    sc = run_client(lab, requests=30, connections=4, mode="close", kind="download",
                    download_size=30000, tag="wcsc")
    assert ka["ok"] == 60 and sc["ok"] == 30
    target = {r["path"]: r for r in logs("target", 90, 20.0)}
    assert tc.wait_stat("compare_records", 90, timeout=15) >= 90
    tc.stop()
    st = tc.stats()
    assert st["compare_records"] == 90 and st["compare_timeouts"] == 0
    recs = []
    for f in sorted(out.glob("compare-*.jsonl")):
        recs += [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
    tlabel = "%s:80" % lab.ip["target"]
    assert len(recs) == 90
    for r in recs:
        a, t = r["answers"][tlabel], target[r["req"]["path"]]
        assert a is not None and (a["status"], a["size"]) == (t["status"], t["resp_len"]), r
    assert ic.stats()["records_forwarded"] > 0
    log = ic.log()
    assert "[worker 0] capturing whole answers" in log
    assert "[worker 1] capturing whole answers" in log


def test_a_worker_that_dies_stops_intercept(lab, workdir, procs):
    ic = intercept(lab, workdir, extra=["--workers", "2"], name="ic-w2c")
    procs.append(ic)
    kids = lab.run("assistant", ["pgrep", "-P", str(ic.proc.pid)], check=False).stdout.split()
    assert len(kids) == 2, kids
    os.kill(int(kids[1]), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while ic.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ic.proc.returncode not in (None, 0)
    assert not os.path.exists(f"/proc/{kids[0]}"), "the other worker was left running"
