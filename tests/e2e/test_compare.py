"""tcpcopy --compare end to end in the four-namespace lab: the online server's
answers captured on online, the target's through intercept's negotiated
extension, one JSON Lines record per request with both."""

from __future__ import annotations

import json
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
        assert ka["ok"] == 120 and sc["ok"] == 60 and gk["ok"] == 40
        n = 220
        online = logs("online", n)
        target = logs("target", n, timeout=20)
        # every record is written once all answers are in (no timeout expected here)
        assert tc.wait_stat("compare_records", n, timeout=15) >= n
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
        if "/cmpup/" in path:
            assert r["answers"]["online"]["fields"]["server"] == "online"
            assert r["answers"][tlabel]["fields"]["server"] == "target"
    assert differ > 60  # the target's answers are the target's own, not copies of online's
    assert len({(r["flow"], r["n"]) for r in recs}) == n
    assert {r["n"] for r in recs if "cmpsc" in r["req"]["path"]} == {0}
    assert time.time() - 120 < min(r["t"] for r in recs) <= max(r["t"] for r in recs) < time.time()
