"""Offline replay end to end (issue 3 §1): capture real traffic, replay it, count.

In lab ``pyo`` (10.231.3.0/24): a client sends short-connection HTTP requests
to online while tcpdump captures them there; then pycopy's tcpcopy replays the
capture file to the target (``-i FILE``) through intercept on the assistant, at
``-a 1``, ``-a 5`` and ``-T 3``.  The target's request log must hold every
request of the file, once per round: 100 % each time.

The target closes first (``Connection: close``), so every replayed 4-tuple
ends in TIME_WAIT on the target; each run therefore shifts client ports with
``-f`` (as separate tcpcopy instances must), and ``-T`` rounds rely on the
engine giving each round fresh ports.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycopy_engine.io.pcapfile import PcapReader
from tests.lab.netns import Lab, lab_unavailable
from tests.lab.services import HttpServerProc, run_client

pytestmark = pytest.mark.lab

PREFIX, SUBNET = "pyo", "10.231.3"
REQUESTS = 60


def requests_in(path: Path, online: str) -> collections.Counter[tuple[str, str]]:
    """(method, path) of every request line sent to online:80 in a capture file."""
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    with PcapReader(str(path)) as r:
        for _, p in r:
            ihl = (p[0] & 15) * 4
            if p[16:20] != bytes(map(int, online.split("."))) or p[ihl + 2 : ihl + 4] != b"\0P":
                continue
            body = p[ihl + (p[ihl + 12] >> 4) * 4 :]
            for method in (b"GET ", b"POST ", b"HEAD "):
                if body.startswith(method):
                    line = body.split(b"\r\n", 1)[0].decode()
                    out[(line.split()[0], line.split()[1])] += 1
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("pyo-offline")
    with Lab(PREFIX, SUBNET) as the_lab:
        servers = {h: HttpServerProc(the_lab, h, work) for h in ("online", "target")}
        online = the_lab.ip["online"]
        cap_path = work / "capture.pcap"
        err_path = work / "tcpdump.err"
        with open(err_path, "w") as err:
            dump = the_lab.popen(
                "online",
                ["tcpdump", "-n", "-Z", "root", "-i", "eth0", "-s", "0", "-U",
                 "-w", str(cap_path), f"tcp port 80 and host {online}"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        for _ in range(100):
            if "listening on" in err_path.read_text():
                break
            assert dump.poll() is None, err_path.read_text()
            time.sleep(0.05)
        time.sleep(0.2)
        result = run_client(the_lab, requests=REQUESTS, connections=4, mode="close", tag="off",
                            delay=0.01)  # fmt: skip
        assert result["ok"] == REQUESTS, result
        time.sleep(0.5)
        the_lab.stop(dump)
        assert requests_in(cap_path, online), err_path.read_text()
        log = open(work / "intercept.log", "w")
        icpt = the_lab.popen(
            "assistant",
            [sys.executable, "-m", "pycopy_engine.cli.intercept", "-i", "eth0",
             "-F", "tcp and src port 80"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        time.sleep(1.5)
        assert icpt.poll() is None, (work / "intercept.log").read_text()
        yield {"lab": the_lab, "work": work, "servers": servers, "pcap": cap_path}
        the_lab.stop(icpt)
        log.close()


def replay(env: dict[str, Any], name: str, *extra: str) -> tuple[int, str, list[dict[str, Any]]]:
    the_lab: Lab = env["lab"]
    target = env["servers"]["target"]
    before = len(target.records())
    t, a, o = (the_lab.ip[h] for h in ("target", "assistant", "online"))
    argv = [sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "-i", str(env["pcap"]),
            "-x", f"{o}:80-{t}:80", "-s", a, *extra]  # fmt: skip
    res = the_lab.run("online", argv, check=False, timeout=180)
    time.sleep(0.3)  # the server flushes its log every 100 ms
    return res.returncode, res.stdout + res.stderr, target.records()[before:]


def test_capture_holds_every_request(lab: dict[str, Any]) -> None:
    reqs = requests_in(lab["pcap"], lab["lab"].ip["online"])
    assert sum(reqs.values()) == REQUESTS and len(reqs) == REQUESTS


@pytest.mark.parametrize(
    "name,args,rounds",
    [("a1", ["-a", "1", "-f", "1"], 1), ("a5", ["-a", "5", "-f", "2"], 1),
     ("T3", ["-a", "5", "-T", "3", "-f", "3"], 3)],
)  # fmt: skip
def test_replay_reaches_the_target_in_full(
    lab: dict[str, Any], name: str, args: list[str], rounds: int
) -> None:
    want = requests_in(lab["pcap"], lab["lab"].ip["online"])
    assert sum(want.values()) == REQUESTS
    t0 = time.monotonic()
    code, out, recs = replay(lab, name, *args)
    elapsed = time.monotonic() - t0
    assert code == 0, out[-3000:]
    got = collections.Counter((r["method"], r["path"]) for r in recs)
    assert got == collections.Counter({k: v * rounds for k, v in want.items()}), out[-3000:]
    assert elapsed < 60, f"replay took {elapsed:.1f} s"


@pytest.mark.parametrize("extra", [["-f", "4"], ["-f", "5", "-I", "20"]], ids=["paced", "idle-skip"])
def test_two_workers_replay_each_flow_once(lab: dict[str, Any], extra: list[str]) -> None:
    """--workers 2 offline: both workers read the file, each replays the flows
    of its hash slot (left out before the pacer, or after it with -I): every
    request arrives once, and both did some."""
    want = requests_in(lab["pcap"], lab["lab"].ip["online"])
    code, out, recs = replay(lab, "w2", "-a", "5", *extra, "--workers", "2")
    assert code == 0, out[-3000:]
    got = collections.Counter((r["method"], r["path"]) for r in recs)
    assert got == want, out[-3000:]
    done = re.findall(r"\[worker (\d)\] offline replay done: sessions:(\d+), requests sent:(\d+)",
                      out)
    assert sorted(w for w, _s, _r in done) == ["0", "1"], out[-3000:]
    assert all(int(r) > 0 for _w, _s, r in done)
    assert sum(int(r) for _w, _s, r in done) == REQUESTS
