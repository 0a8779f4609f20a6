"""Precision of --delay (issue 12; prints figures, not a test).

1. The hold queue alone (core.delay.DelayLine on the project's event loop, real
   clock, no network): packets pushed at 1,000/s, each released how long after
   its due time.
2. End to end in the four-namespace lab: the lab's HTTP client at about 1,000
   requests/s (keep-alive), tcpcopy --delay SPEC on online, intercept on the
   assistant; tcpdump on online and on target timestamps (in the kernel) the
   first packet of every request; error = (target time - online time) - delay.
   tcpcopy and intercept run SCHED_RR, as in tests/e2e/test_unattended.py, so
   that the figures are pycopy's rather than the neighbours' load.

    python3 bench/bench_delay.py [--seconds 5] [--rate 1000] [--specs 50ms,50ms:10ms]

Needs root, tcpdump and scapy.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pycopy_engine.core.delay import DelayLine, parse_delay  # noqa: E402
from pycopy_engine.io.loop import Loop  # noqa: E402
from pycopy_engine.wire.tcpip import ACK, build_ipv4_tcp  # noqa: E402
from tests.lab.netns import Lab, cleanup_prefix  # noqa: E402

PREFIX, SUBNET = "pkdl", "10.232.7"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def ms(x):
    return "%.2f" % (x * 1e3)


def queue_alone(spec_text: str, rate: int, seconds: float) -> None:
    spec = parse_delay(spec_text)
    line = DelayLine(spec, random.Random(1))
    loop = Loop()
    late = []
    due_at = {}
    n_total = int(rate * seconds)
    state = {"i": 0, "timer": None}
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

    def arm():
        d = line.next_deadline()
        if d is not None:
            if state["timer"] is not None:
                state["timer"].cancel()
            state["timer"] = loop.call_at(d, release)

    def release():
        state["timer"] = None
        now = loop.time()
        for _tag, pkt in line.due(now):
            ident = int.from_bytes(pkt[4:6], "big") | (int.from_bytes(pkt[22:24], "big") << 16)
            late.append(now - due_at[ident])
        arm()
        if state["i"] >= n_total and not line.held:
            loop.stop()

    def push():
        i = state["i"]
        if i >= n_total:
            return
        now = loop.time()
        pkt = build_ipv4_tcp(src, dst, 20000 + i % 1000, 80, (i >> 16) << 16, 1, ACK, 512, b"",
                             b"x", i & 0xFFFF)
        line.push(pkt, now)
        state["i"] = i + 1
        loop.call_at(start + (i + 1) / rate, push)
        arm()

    # the due time of each packet is the heap's own: read it back as it is pushed
    orig = line._schedule

    def spy(key, f, at, tag, pkt):
        orig(key, f, at, tag, pkt)
        due_at[int.from_bytes(pkt[4:6], "big") | (int.from_bytes(pkt[22:24], "big") << 16)] = f.last

    line._schedule = spy  # type: ignore[method-assign]
    start = loop.time()
    loop.call_at(start, push)
    loop.run()
    print("  hold queue alone, %-10s %d packets at %d/s: released late by median %s ms, "
          "p99 %s ms, max %s ms" % (spec_text, len(late), rate, ms(statistics.median(late)),
                                    ms(pct(late, 99)), ms(max(late))))


def first_seen(path: Path) -> dict:
    from scapy.all import TCP, PcapReader  # type: ignore[import-untyped]

    seen: dict = {}
    with PcapReader(str(path)) as r:
        for p in r:
            if TCP in p:
                data = bytes(p[TCP].payload)
                if data[:4] == b"GET ":
                    seen.setdefault(data.split(b" ", 2)[1].decode(), float(p.time))
    return seen


def wait_file(path: Path, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() > deadline:
            raise SystemExit("timeout waiting for %s in %s" % (text, path))
        time.sleep(0.05)


def lab_run(lab: Lab, work: Path, spec_text: str, rate: int, seconds: float) -> None:
    spec = parse_delay(spec_text)
    tag = "b" + spec_text.replace(":", "j").replace(".", "")
    sn = {}
    for host in ("online", "target"):
        err = work / f"{tag}-{host}.err"
        p = lab.popen(host, ["tcpdump", "-i", "eth0", "-n", "-U", "-s", "200", "-w",
                             str(work / f"{tag}-{host}.pcap"), "tcp dst port 80"],
                      stdout=subprocess.DEVNULL, stderr=open(err, "w"))
        sn[host] = p
        wait_file(err, "listening on")
    stats = work / f"{tag}-tc.json"
    tc = lab.python("online", "pycopy_engine.cli.tcpcopy", "-x", f"80-{lab.ip['target']}:80",
                    "-s", lab.ip["assistant"], "--delay", spec_text, "--stats-json", str(stats),
                    "--stats-interval", "0.5", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.sched_setscheduler(tc.pid, os.SCHED_RR, os.sched_param(10))
    wait_file(stats, "counters")
    conns, procs = 10, 4  # one Python client process does not reach 1,000/s here
    n = int(rate * seconds) // procs * procs
    t0 = time.monotonic()
    clients = [lab.popen("client", [sys.executable, "-m", "tests.lab.client", "--host",
                                    lab.ip["online"], "--requests", str(n // procs),
                                    "--connections", str(conns), "--mode", "keepalive",
                                    "--delay", str(0.7 * conns * procs / rate),  # + latency
                                    "--tag", f"{tag}{i}",
                                    "--expect-server", "online"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for i in range(procs)]
    for c in clients:
        c.wait(seconds * 20 + 60)
    elapsed = time.monotonic() - t0
    time.sleep(2.0)
    for p in sn.values():
        lab.stop(p)
    lab.stop(tc)
    on, tg = first_seen(work / f"{tag}-online.pcap"), first_seen(work / f"{tag}-target.pcap")
    lags = [tg[p] - t for p, t in on.items() if f"/{tag}" in p and p in tg]
    if not lags:
        print("  %-10s no request pairs found" % spec_text)
        return
    err = [x - spec.base for x in lags]
    print("  lab, %-10s %d requests at %.0f/s, %d on both hosts: error median %s ms, p90 %s ms, "
          "p99 %s ms, min %s ms, max %s ms%s" % (
              spec_text, n, n / elapsed, len(lags), ms(statistics.median(err)), ms(pct(err, 90)),
              ms(pct(err, 99)), ms(min(err)), ms(max(err)),
              (", spread sd %s ms (uniform +-%s ms: %s)" % (
                  ms(statistics.pstdev(lags)), ms(spec.jitter), ms(spec.jitter / 3 ** 0.5)))
              if spec.jitter else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--specs", default="50ms,50ms:10ms")
    a = ap.parse_args()
    specs = [s for s in a.specs.split(",") if s]
    print("--delay precision (%s)" % time.strftime("%Y-%m-%d %H:%M"))
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))  # as tcpcopy in the lab runs
    for s in specs:
        queue_alone(s, a.rate, a.seconds)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    cleanup_prefix(PREFIX)
    with tempfile.TemporaryDirectory(prefix="pk-bench-delay-") as d, Lab(PREFIX, SUBNET) as lab:
        work = Path(d)
        servers = []
        for host in ("online", "target"):
            ready = work / f"{host}.ready"
            servers.append(lab.python(host, "tests.lab.httpserver", "--port", "80", "--name", host,
                                      "--log", str(work / f"{host}.jsonl"), "--ready", str(ready),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 15
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        icstats = work / "ic.json"
        ic = lab.python("assistant", "pycopy_engine.cli.intercept", "-i", "eth0", "-F",
                        "tcp and src port 80", "--stats-json", str(icstats), "--stats-interval", "0.5",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_file(icstats, "counters")
        os.sched_setscheduler(ic.pid, os.SCHED_RR, os.sched_param(10))
        for s in specs:
            lab_run(lab, work, s, a.rate, a.seconds)
        lab.stop(ic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
