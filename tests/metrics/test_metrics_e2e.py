"""Scrape tcpcopy's and intercept's /metrics during a real replication run.

Lab ``pyo`` (10.231.3.0/24): a client sends HTTP requests to online; pycopy's
tcpcopy copies them to target, intercept on the assistant reports the
responses.  While the client runs, the test scrapes both endpoints (from
inside their namespaces) and parses every scrape with the strict parser; at
the end the numbers must equal what the client sent and the target logged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.netns import Lab, lab_unavailable
from tests.lab.services import HttpServerProc, logged_keys, run_client, sent_keys

from .promparse import parse

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "pyo", "10.231.3"


def scrape(lab: Lab, host: str, port: int) -> dict[str, float]:
    """GET /metrics from inside ``host``; {series: value} after a strict parse."""
    with lab.inside(host):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = resp.read().decode()
    out = {}
    for fam in parse(text).values():
        for (name, labels), value in fam["samples"].items():
            key = name + "".join(f"{{{k}={v}}}" for k, v in labels)
            out[key] = value
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("pyo-metrics")
    with Lab(PREFIX, SUBNET) as the_lab:
        yield the_lab, work


def start(lab: Lab, host: str, prog: str, args: list[str], work: Path) -> subprocess.Popen[Any]:
    log = open(work / f"{prog}.log", "w")
    argv = [sys.executable, "-m", f"pycopy_engine.cli.{prog}", *args]
    return lab.popen(host, argv, stdout=log, stderr=subprocess.STDOUT)


def wait_metrics(lab: Lab, host: str, port: int, proc: subprocess.Popen[Any]) -> None:
    for _ in range(200):
        assert proc.poll() is None, f"{host} process exited {proc.returncode}"
        try:
            scrape(lab, host, port)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"no /metrics on {host}:{port}")


def test_scraped_counters_match_the_client(lab: tuple[Lab, Path]) -> None:
    the_lab, work = lab
    servers = {h: HttpServerProc(the_lab, h, work) for h in ("online", "target")}
    t, a = the_lab.ip["target"], the_lab.ip["assistant"]
    icpt = start(the_lab, "assistant", "intercept",
                 ["-i", "eth0", "-F", "tcp and src port 80", "--metrics", "127.0.0.1:9101",
                  "--stats-interval", "0.2"], work)  # fmt: skip
    wait_metrics(the_lab, "assistant", 9101, icpt)
    tc = start(the_lab, "online", "tcpcopy",
               ["-x", f"80-{t}:80", "-s", a, "--metrics", "127.0.0.1:9100",
                "--stats-json", str(work / "tc.json"), "--stats-interval", "0.2"], work)  # fmt: skip
    wait_metrics(the_lab, "online", 9100, tc)

    requests, conns = 120, 40
    result: dict[str, Any] = {}

    def client() -> None:
        result.update(run_client(the_lab, requests=requests, connections=conns, mode="close",
                                 tag="metrics", delay=0.01))  # fmt: skip

    th = threading.Thread(target=client)
    th.start()
    during = []
    while th.is_alive():
        during.append(scrape(the_lab, "online", 9100))
        time.sleep(0.1)
    th.join()
    assert result["ok"] == requests and not result["failed"], result

    recs = servers["target"].wait_records(requests, timeout=20)
    assert sent_keys(result) == logged_keys(recs)  # every request reached the target
    deadline = time.monotonic() + 10
    while True:
        final = scrape(the_lab, "online", 9100)
        icpt_final = scrape(the_lab, "assistant", 9101)
        done = final.get("pycopy_tcpcopy_requests_sent_total") == requests
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert len(during) >= 2
    series = [d.get("pycopy_tcpcopy_requests_sent_total", 0) for d in during] + [
        final["pycopy_tcpcopy_requests_sent_total"]
    ]
    assert series == sorted(series)  # counters never go back
    # "close" mode: one connection per request
    assert final["pycopy_tcpcopy_requests_sent_total"] == requests
    assert final["pycopy_tcpcopy_sessions_opened_total"] == requests
    assert final["pycopy_tcpcopy_conns_total"] == requests  # SYN-ACKs received
    assert final["pycopy_tcpcopy_send_syn_total"] == requests
    assert icpt_final["pycopy_intercept_route_add_total"] == requests
    assert icpt_final["pycopy_intercept_records_sent_total"] >= 3 * requests
    # the JSON file agrees with the endpoint
    doc = json.loads((work / "tc.json").read_text())
    assert doc["counters"].get("requests_sent", 0) <= requests  # written every interval
    assert the_lab.stop(tc) == 0
    doc = json.loads((work / "tc.json").read_text())
    assert doc["counters"]["requests_sent"] == requests
    the_lab.stop(icpt)
    for s in servers.values():
        s.stop()
