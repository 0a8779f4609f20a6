"""The worker supervisor (pycopy_engine/io/workers.py) with real processes:
the toy program of tests/workers/toy.py forked into workers, its merged
/metrics and --stats-json, and what happens when a worker or the parent dies."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for us
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Toy:
    def __init__(self, tmp: Path, n: int = 2, *extra: str) -> None:
        self.json = tmp / "stats.json"
        self.port = _free_port()
        self.err = open(tmp / "toy.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.workers.toy", str(n), str(self.json),
             f"127.0.0.1:{self.port}", *extra],
            cwd=ROOT, stderr=self.err, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def doc(self) -> dict:
        try:
            return json.loads(self.json.read_text())
        except (OSError, ValueError):
            return {}

    def running(self) -> dict:
        """The JSON document once every worker has counted something."""
        def ok():
            d = self.doc()
            per = d.get("per_worker", {})
            return d if per and all(w["counters"].get("ticks", 0) > 0
                                    for w in per.values()) else None
        return _wait(ok, what="both workers counting")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.err.close()


@pytest.fixture
def toy(tmp_path):
    made = []

    def make(*args, **kw):
        t = Toy(tmp_path, *args, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def _value(text: str, series: str) -> float:
    m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert m, f"{series} not in\n{text}"
    return float(m.group(1))


def test_merged_metrics_and_json_are_the_sum_of_the_workers(toy):
    t = toy()
    t.running()
    text = t.metrics()
    # one scrape: each worker's snapshot is consistent, so the merged counter
    # is exactly the sum of the per-worker labelled ones
    w0 = _value(text, 'pycopy_toy_ticks_by_total{worker="0"}')
    w1 = _value(text, 'pycopy_toy_ticks_by_total{worker="1"}')
    assert w0 > 0 and w1 > 0
    assert _value(text, "pycopy_toy_ticks_total") == w0 + w1
    assert _value(text, "pycopy_toy_level") == 10 + 11  # a gauge: summed
    assert _value(text, "pycopy_toy_flag") == 1  # merged by max, not 0 + 1
    assert _value(text, "pycopy_toy_workers") == 2
    assert _value(text, 'pycopy_toy_worker_up{worker="0"}') == 1
    assert _value(text, 'pycopy_toy_worker_up{worker="1"}') == 1
    d = t.running()
    per = d["per_worker"]
    assert d["counters"]["ticks"] == sum(w["counters"]["ticks"] for w in per.values())
    assert d["counters"]["flag"] == 1 and d["workers"] == 2
    assert per["0"]["up"] and per["1"]["up"] and per["0"]["pid"] != per["1"]["pid"]


def test_sigkill_of_one_worker_stops_the_other_and_the_parent_fails(toy):
    t = toy()
    per = t.running()["per_worker"]
    victim, other = per["1"]["pid"], per["0"]["pid"]
    os.kill(victim, signal.SIGKILL)
    assert t.proc.wait(15) == 128 + signal.SIGKILL
    assert not _alive(other)
    log = t.log()
    assert f"worker 1 (pid {victim}) died unexpectedly: killed by signal 9 (SIGKILL)" in log
    assert f"stopping the other 1 worker(s) (pids {other})" in log
    d = t.doc()
    assert d["per_worker"]["1"]["exit_status"] == 137 and not d["per_worker"]["1"]["up"]
    assert d["per_worker"]["0"]["exit_status"] == 0


def test_sigterm_to_the_parent_stops_every_worker_cleanly(toy):
    t = toy()
    per = t.running()["per_worker"]
    os.kill(t.proc.pid, signal.SIGTERM)
    assert t.proc.wait(15) == 0
    assert not any(_alive(w["pid"]) for w in per.values())
    log = t.log()
    assert "[worker 0] worker 0 stopping" in log and "[worker 1] worker 1 stopping" in log
    d = t.doc()  # the final document: the workers' last counters, none up
    assert not d["per_worker"]["0"]["up"] and not d["per_worker"]["1"]["up"]
    assert d["counters"]["ticks"] == sum(w["counters"]["ticks"] for w in d["per_worker"].values())


def test_workers_die_with_the_parent(toy):
    t = toy()
    per = t.running()["per_worker"]
    os.kill(t.proc.pid, signal.SIGKILL)
    t.proc.wait(10)
    _wait(lambda: not any(_alive(w["pid"]) for w in per.values()), what="workers to die")


def test_a_worker_failing_before_it_is_ready_stops_the_others(toy):
    t = toy(3, "--fail-ready", "2")
    assert t.proc.wait(15) == 3
    log = t.log()
    assert re.search(r"worker 2 \(pid \d+\) died unexpectedly: exit status 3", log), log
    assert "all 3 workers ready" not in log


def test_finish_ok_workers_that_end_by_themselves_are_not_a_failure(toy):
    t = toy(2, "--finish")
    assert t.proc.wait(15) == 0
    d = t.doc()
    assert d["counters"]["ticks"] == 60
    assert "died unexpectedly" not in t.log()


def test_a_stop_before_the_workers_set_their_handlers_is_a_clean_stop(toy):
    """SIGTERM while a worker is still setting up (default disposition: it
    dies of it): a requested stop, exit 0; a worker killed by anything else
    still counts."""
    t = toy(2, "--slow-start")
    _wait(lambda: "workers started" in t.log(), what="fork")
    os.kill(t.proc.pid, signal.SIGTERM)
    assert t.proc.wait(15) == 0, t.log()
    assert "ended: killed by signal 15 (SIGTERM)" in t.log()


def test_the_status_is_the_failed_workers_not_of_those_it_stopped(toy):
    """Worker 2 fails while the others still set up (the supervisor's SIGTERM
    kills them, default disposition): the exit status is worker 2's."""
    t = toy(3, "--fail-ready", "2", "--slow-start")
    assert t.proc.wait(15) == 3, t.log()
    assert "ended: killed by signal 15 (SIGTERM)" in t.log()
