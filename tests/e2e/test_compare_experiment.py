"""The comparison experiment end to end (issue 9) in the four-namespace lab.

One online server and two targets on the target host: a baseline
(``<target>:80``, online's behaviour) and a candidate (``<subnet>.22:8080``,
``--candidate``) that differs from online in exactly three planted ways
(:data:`tests.lab.httpserver.CANDIDATE_CHANGES`): ``/api/orders/`` answers 500,
``/api/search/`` is 50 ms slower, ``/api/users/``'s ``user.tier`` changes
value.  Every ``/api/`` answer of all three servers also carries noise fields
that differ on every request (a timestamp, a random id, a shuffled list).

``tcpcopy --tee --compare DIR`` copies the live traffic to both targets and
records the three answers of each request; ``pycopy-compare DIR --baseline
<baseline>`` must name exactly the three regressions, on the candidate, and
nothing else; both targets must have received every request.  While tcpcopy
runs, its ``/metrics`` must count the candidate's planted differences per
endpoint and kind (raw, against online), above the baseline's own counts.

``PYCOPY_EXPERIMENT_REPORT=DIR`` keeps the run's report.html and summary.json
in DIR (the README's screenshot is of such a run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.lab.httpserver import CANDIDATE_CHANGES
from tests.lab.services import HttpServerProc, logged_keys, run_client, sent_keys
from tests.metrics.promparse import parse

from .procs import Proc

pytestmark = pytest.mark.lab

KEEPALIVE, SHORT = 400, 80  # requests of each run, a quarter per endpoint
METRICS_PORT = 9309  # tcpcopy's --metrics, on the online host's loopback


@pytest.fixture(scope="module")
def candidate(lab, lab_workdir):
    """The candidate: ``<subnet>.22:8080`` on the target host, the planted changes on."""
    ip = lab.ip["target"].rsplit(".", 1)[0] + ".22"
    lab.add_address("target", ip + "/24")
    srv = HttpServerProc(lab, "target", lab_workdir, port=8080, name="candidate",
                         extra=("--bind", ip, "--candidate"))
    try:
        yield ip, srv
    finally:
        srv.stop()


def read_records(d: Path) -> list:
    out = []
    for f in sorted(d.glob("compare-*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def wait_api(srv: HttpServerProc, start: int, n: int, timeout: float = 20.0) -> list:
    """The server's /api/ log records after ``start``, once there are ``n`` (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        recs = [r for r in srv.records()[start:] if r["path"].startswith("/api/")]
        if len(recs) >= n or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def scrape(lab, host: str, port: int) -> tuple:
    """tcpcopy's /metrics from inside ``host``: (strictly parsed families, text)."""
    with lab.inside(host):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    return parse(text), text


def live_differences(fams: dict) -> tuple:
    """{(endpoint, target, kind): n} and {(endpoint, target): answers} of a scrape."""
    diffs, answers = {}, {}
    name = "pycopy_tcpcopy_compare_differences_total"
    for (_, labels), v in fams.get(name, {"samples": {}})["samples"].items():
        d = dict(labels)
        diffs[(d["endpoint"], d["target"], d["kind"])] = v
    name = "pycopy_tcpcopy_compare_answers_total"
    for (_, labels), v in fams.get(name, {"samples": {}})["samples"].items():
        d = dict(labels)
        answers[(d["endpoint"], d["target"])] = v
    return diffs, answers


def check_live_counters(lab, base: str, cand: str, per_ep: int) -> None:
    """The planted differences, counted raw against online while tcpcopy runs."""
    fams, text = scrape(lab, "online", METRICS_PORT)
    diffs, answers = live_differences(fams)
    assert "no noise cancellation" in text
    eps = {ep: f"GET /api/{ep}/{{id}}" for ep in ("users", "orders", "search", "items")}
    for ep in eps.values():
        for t in (base, cand):
            assert answers.get((ep, t)) == per_ep, (ep, t, answers)
            for kind in ("size", "body"):  # JSON answers: compared by field
                assert diffs.get((ep, t, kind), 0) == 0, (ep, t, kind, diffs)
    def n(ep, t, kind):
        return diffs.get((eps[ep], t, kind), 0)
    # status: the candidate's 500s on orders, nowhere else; none on the baseline
    assert n("orders", cand, "status") == per_ep
    assert sum(n(ep, t, "status") for ep in eps for t in (base, cand)) == per_ep, diffs
    # latency: the candidate's +50 ms on search, each answer; the baseline's own
    # (timing noise) is lower
    assert n("search", cand, "latency") >= 0.9 * per_ep, diffs
    assert n("search", base, "latency") < n("search", cand, "latency"), diffs
    # field: raw, so the noise fields (timestamp, random id, shuffled list) make
    # every JSON answer of both targets differ: the baseline's count is the noise
    # level, and the candidate's planted user.tier is hidden in it (the report
    # cancels it); the candidate's 500s are compared by status only
    for ep in ("users", "search", "items"):
        assert n(ep, cand, "field") == n(ep, base, "field") == per_ep, diffs
    assert n("orders", cand, "field") == 0 and n("orders", base, "field") == per_ep, diffs
    over = fams["pycopy_tcpcopy_compare_endpoints_overflowed_total"]["samples"]
    assert list(over.values()) == [0]


def test_report_names_exactly_the_planted_regressions(lab, workdir, http_servers, candidate):
    cip, csrv = candidate
    base = "%s:80" % lab.ip["target"]
    cand = "%s:8080" % cip
    servers = {"online": http_servers["online"], "baseline": http_servers["target"],
               "candidate": csrv}
    start = {k: len(s.records()) for k, s in servers.items()}
    out = workdir / "experiment"
    ic = Proc(lab, "assistant", "intercept",
              ["-i", "eth0", "-F", "tcp and (src port 80 or src port 8080)"], workdir, "ic-exp")
    tc = Proc(lab, "online", "tcpcopy",
              ["-x", f"80-{lab.ip['target']}:80,80-{cip}:8080", "--tee",
               "-s", lab.ip["assistant"], "--compare", str(out),
               "--metrics", f"127.0.0.1:{METRICS_PORT}"], workdir, "tc-exp")
    try:
        ka = run_client(lab, requests=KEEPALIVE, connections=3, mode="keepalive", kind="api",
                        tag="1")
        sc = run_client(lab, requests=SHORT, connections=4, mode="close", kind="api", tag="2")
        assert ka["ok"] == KEEPALIVE and sc["ok"] == SHORT, (ka["errors"], sc["errors"])
        n = KEEPALIVE + SHORT
        got = {k: wait_api(s, start[k], n) for k, s in servers.items()}
        assert tc.wait_stat("compare_records", n, timeout=20) >= n
        check_live_counters(lab, base, cand, n // 4)  # while it runs
    finally:
        tc.stop()
        ic.stop()
    st = tc.stats()
    # 100 % replicated: every request the client sent reached both targets, once
    sent = sorted(sent_keys(ka) + sent_keys(sc))
    for k in ("online", "baseline", "candidate"):
        assert logged_keys(got[k]) == sent, f"{k}: {len(got[k])} of {len(sent)}"
    assert st["compare_records"] == n and st.get("compare_timeouts", 0) == 0, st

    recs = [r for r in read_records(out) if r["req"]["path"].startswith("/api/")]
    assert len(recs) == n
    for r in recs:  # tee copies recorded under each target's own ip:port
        assert set(r["answers"]) == {"online", base, cand}, r
        assert all(a is not None and "error" not in a for a in r["answers"].values()), r

    res = subprocess.run([sys.executable, "-m", "pycopy_engine.compare.cli", str(out),
                          "--baseline", base], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == base and summary["targets"] == sorted([base, cand])
    found = sorted((g["endpoint"], g["target"], g["kind"], g["field"])
                   for g in summary["regressions"])
    planted = sorted((f"GET /api/{ep}/{{id}}", cand, kind, field)
                     for ep, (kind, field) in CANDIDATE_CHANGES.items())
    assert found == planted, json.dumps(summary["regressions"], indent=1)[:4000]
    per_ep = n // 4
    for g in summary["regressions"]:
        if g["kind"] in ("status", "field"):  # every request of the endpoint, no noise
            assert g["count"] == per_ep and g["noise"] == 0, g
        else:
            assert 40.0 <= g["change_ms"]["p50"] < 200.0, g
    # the noise was there, and was cancelled: the baseline differs from online as often
    noise = {(d["endpoint"], d["field"]): d for d in summary["differences"]
             if d["target"] == cand and d["kind"] == "field"}
    for ep in ("users", "orders", "search", "items"):
        if ep == "orders":
            continue  # the candidate's 500s are compared by status only
        for field in ("ts", "request_id", "tags[0]"):
            d = noise[(f"GET /api/{ep}/{{id}}", field)]
            assert d["noise"] > per_ep // 2 and not d["reported"], d
    assert "report.html" in res.stdout and cand in res.stdout
    html = (out / "report.html").read_text()
    assert "<svg" in html and "user.tier" in html
    keep = os.environ.get("PYCOPY_EXPERIMENT_REPORT")
    if keep:
        os.makedirs(keep, exist_ok=True)
        for name in ("report.html", "summary.json"):
            shutil.copyfile(out / name, os.path.join(keep, name))
