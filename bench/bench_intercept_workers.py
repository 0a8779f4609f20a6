"""intercept with 1 and with N workers, side by side, in the four-namespace lab.

nginx on online and target, wrk on the client, pycopy's tcpcopy (``-C 2``)
on online and pycopy's intercept on the assistant, once with ``--workers 1``
and once with ``--workers N``, at each mode's top rate.  Prints the achieved
rate, the fidelity, intercept's CPU (parent and workers) per request and per
answer record written to tcpcopy, and the share of records that went from
one worker to another::

    python3 bench/bench_intercept_workers.py [--workers 2] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import NGINX_CONF, cpu_seconds, lines, wait_stable, wrk_argv  # noqa: E402
from tests.lab.netns import Lab, cleanup_prefix  # noqa: E402

PREFIX, SUBNET = "pxi", "10.212.1"


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the workers)."""
    total = cpu_seconds(pid)
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    for k in kids:
        try:
            total += cpu_seconds(int(k))
        except OSError:
            pass
    return total


def _profile(where, pid: int, nw: int, mode: str, duration: float) -> list:
    if not where:
        return []
    Path(where).mkdir(parents=True, exist_ok=True)
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() or [str(pid)]
    return [subprocess.Popen(["py-spy", "record", "-r", "200", "-d", str(int(duration)),
                              "-f", "raw", "-p", k, "-o", f"{where}/ic-w{nw}-{mode}-{i}.txt"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, k in enumerate(kids)]


def counters(path: Path) -> dict:
    for _ in range(40):
        try:
            return json.loads(path.read_text())["counters"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--modes", default="keepalive,close")
    ap.add_argument("--rate", default="max")
    ap.add_argument("--counts", default=None, help="worker counts to run (1,N)")
    ap.add_argument("--profile", metavar="DIR",
                    help="py-spy record (raw stacks) of intercept's processes into DIR")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="pxi-bench-"))
    work.chmod(0o755)
    cleanup_prefix(PREFIX)
    rows = []
    with Lab(PREFIX, SUBNET) as lab:
        servers = []
        for name in ("online", "target"):
            conf = work / f"nginx-{name}.conf"
            conf.write_text(NGINX_CONF.format(dir=work, name=name, ip=lab.ip[name]))
            servers.append(lab.popen(name, ["nginx", "-c", str(conf)]))
        o, t, a = lab.ip["online"], lab.ip["target"], lab.ip["assistant"]
        py = [sys.executable, "-m"]
        try:
            counts = [int(x) for x in (args.counts or "1,%d" % args.workers).split(",")]
            for nw in counts:
                stats = work / f"ic-{nw}.json"
                ic = lab.popen("assistant", [
                    *py, "pycopy_engine.cli.intercept", "-i", "eth0", "-F", "tcp and src port 80",
                    "--workers", str(nw), "-l", str(work / f"ic-{nw}.log"),
                    "--stats-json", str(stats), "--stats-interval", "0.5"])
                deadline = time.monotonic() + 20
                while not stats.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(0.5)
                tc = lab.popen("online", [
                    *py, "pycopy_engine.cli.tcpcopy", "-x", f"{o}:80-{t}:80", "-s", a, "-C", "2",
                    "-l", str(work / f"tc-{nw}.log")])
                time.sleep(2.0)
                try:
                    for mode in args.modes.split(","):
                        on0 = lines(work / "access-online.log")
                        ta0 = lines(work / "access-target.log")
                        c0, k0 = tree_cpu(ic.pid), counters(stats)
                        spies = _profile(args.profile, ic.pid, nw, mode, args.duration)
                        t0 = time.monotonic()
                        lab.run("client", wrk_argv(mode, args.rate, args, f"http://{o}/",
                                                   work / "rate.lua"),
                                check=False, timeout=args.duration + 60)
                        elapsed = time.monotonic() - t0
                        for spy in spies:
                            spy.wait(30)
                        on1 = wait_stable(work / "access-online.log")
                        ta1 = wait_stable(work / "access-target.log")
                        time.sleep(1.0)
                        c1, k1 = tree_cpu(ic.pid), counters(stats)
                        n_on, n_ta = on1 - on0, ta1 - ta0
                        recs = k1.get("records_sent", 0) - k0.get("records_sent", 0)
                        fwd = k1.get("records_forwarded", 0) - k0.get("records_forwarded", 0)
                        rows.append((nw, mode, n_on / elapsed, n_ta / n_on if n_on else 0.0,
                                     1e6 * (c1 - c0) / n_on if n_on else 0.0,
                                     1e6 * (c1 - c0) / recs if recs else 0.0,
                                     fwd / recs if recs else 0.0))
                        r = rows[-1]
                        print(f"workers {r[0]}  {r[1]:<10} {r[2]:>8.0f}/s  fidelity "
                              f"{100 * r[3]:6.2f} %  intercept {r[4]:6.1f} us/req "
                              f"{r[5]:5.2f} us/record  forwarded {100 * r[6]:4.1f} %",
                              flush=True)
                        time.sleep(1.0)
                finally:
                    lab.stop(tc)
                    lab.stop(ic)
                    time.sleep(1.0)
        finally:
            for s in servers:
                lab.stop(s)
    print("\n| workers | mode | achieved/s | fidelity | intercept µs/req | µs/record "
          "| forwarded between workers |")
    print("|---|---|---|---|---|---|---|")
    for nw, mode, ach, fid, us_req, us_rec, fwd in rows:
        print(f"| {nw} | {mode} | {ach:,.0f} | {100 * fid:.2f} % | {us_req:.1f} | {us_rec:.2f} "
              f"| {100 * fwd:.0f} % |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
