"""Soak benchmark (issue 12; prints a timeline, not a test): steady short
connections for --minutes (30) while the faults of tests/e2e/test_soak.py come
round in turn every --period seconds (90): the target's server restarts,
intercept is killed and restarted, tcpcopy is killed (a supervisor restarts it,
as systemd would), the control link is cut for 10 s, the logs are rotated.

Every minute it prints requests online and on the target, replication, the
faults in that minute, and tcpcopy's and intercept's RSS; at the end, the
requests lost outside a fault window (+10 s) and RSS at the end against RSS
after warm-up.

    python3 bench/soak.py [--minutes 30] [--period 90]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.procs import intercept  # noqa: E402
from tests.e2e.test_soak import CONTROL_PORT, RECOVERY, Supervisor, _rss_kb  # noqa: E402
from tests.lab.netns import Lab, cleanup_prefix  # noqa: E402
from tests.lab.services import HttpServerProc  # noqa: E402

PREFIX, SUBNET = "pksk", "10.232.8"
CUT = [("-I", "INPUT", "-p", "tcp", "--dport", CONTROL_PORT),
       ("-I", "OUTPUT", "-p", "tcp", "--sport", CONTROL_PORT)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--period", type=float, default=90.0)
    a = ap.parse_args()
    cleanup_prefix(PREFIX)
    with tempfile.TemporaryDirectory(prefix="pk-soak-") as d, Lab(PREFIX, SUBNET) as lab:
        work = Path(d)
        online = HttpServerProc(lab, "online", work)
        targets = [HttpServerProc(lab, "target", work, name="target-0")]
        tc_log, ic_log = work / "tcpcopy.log", work / "intercept.log"
        state = {"ic": intercept(lab, work, name="ic-0", extra=["-l", str(ic_log)])}
        sup = Supervisor(lab, work, tc_log)
        client = lab.popen("client", [sys.executable, "-m", "tests.lab.client", "--host",
                                      lab.ip["online"], "--requests", "10000000",
                                      "--connections", "2", "--mode", "close", "--delay", "0.05",
                                      "--tag", "soak"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        faults = []
        rss = []  # (time, tcpcopy kB, intercept kB)
        n = 0

        def target_restart():
            targets[-1].stop()
            time.sleep(2.0)
            targets.append(HttpServerProc(lab, "target", work, name=f"target-{len(targets)}"))

        def intercept_restart():
            state["ic"].proc.send_signal(signal.SIGKILL)
            state["ic"].stop()
            time.sleep(1.0)
            state["ic"] = intercept(lab, work, name=f"ic-{n}", extra=["-l", str(ic_log)])

        def tcpcopy_restart():
            old = sup.proc
            old.proc.send_signal(signal.SIGKILL)
            deadline = time.monotonic() + 20
            while sup.proc is old and time.monotonic() < deadline:
                time.sleep(0.05)

        def control_cut():
            for rule in CUT:
                lab.run("assistant", ["iptables", *rule, "-j", "DROP"])
            time.sleep(10.0)
            for rule in CUT:
                lab.run("assistant", ["iptables", "-D", *rule[1:], "-j", "DROP"])

        def rotate():
            for p, pid in ((tc_log, sup.proc.proc.pid), (ic_log, state["ic"].proc.pid)):
                os.replace(p, str(p) + ".1")
                os.kill(pid, signal.SIGUSR1)

        cycle = [("target restart", target_restart), ("intercept restart", intercept_restart),
                 ("tcpcopy restart", tcpcopy_restart), ("control link cut", control_cut),
                 ("logs rotated", rotate)]
        t_start = time.time()
        t_stop = t_start + a.minutes * 60
        next_fault = t_start + 30.0
        next_rss = t_start
        try:
            while time.time() < t_stop:
                now = time.time()
                if now >= next_rss:
                    try:
                        rss.append((now, _rss_kb(sup.proc.proc.pid), _rss_kb(state["ic"].proc.pid)))
                    except (OSError, AssertionError):
                        pass
                    next_rss = now + 10.0
                if now >= next_fault:
                    name, fn = cycle[n % len(cycle)]
                    n += 1
                    t0 = time.time()
                    fn()
                    faults.append((name, t0, time.time()))
                    next_fault = t0 + a.period
                time.sleep(0.2)
            t_end = time.time()
            lab.stop(client)
            time.sleep(2.0)
        finally:
            if client.poll() is None:
                lab.stop(client)
            sup.stop()
            state["ic"].stop()
            for t in targets:
                t.stop()
            online.stop()
        got = set()
        for t in targets:
            got |= {r["path"] for r in t.records()}
        reqs = [r for r in online.records() if r["time"] < t_end - 1.0]
        print("soak: %.0f minutes, a fault every %.0f s, %d requests online, %d tcpcopy restarts"
              % (a.minutes, a.period, len(reqs), sup.restarts))
        print("minute  online  target  replicated  tcpcopy-RSS-kB  intercept-RSS-kB  faults")
        for m in range(int((t_end - 1.0 - t_start + 59.999) // 60)):
            lo, hi = t_start + 60 * m, t_start + 60 * (m + 1)
            inm = [r for r in reqs if lo <= r["time"] < hi]
            ok = sum(r["path"] in got for r in inm)
            rs = [x for x in rss if lo <= x[0] < hi]
            fl = ", ".join(f"{nm} +{t0 - lo:.0f}s" for nm, t0, _t1 in faults if lo <= t0 < hi)
            print("%6d  %6d  %6d  %9.1f%%  %14s  %16s  %s" % (
                m, len(inm), ok, 100.0 * ok / max(1, len(inm)), rs[-1][1] if rs else "-",
                rs[-1][2] if rs else "-", fl))
        lost = [r for r in reqs if r["path"] not in got]
        outside = [r for r in lost if not any(t0 - 0.5 <= r["time"] <= t1 + RECOVERY
                                              for _n, t0, t1 in faults)]
        print("lost %d requests, %d of them outside a fault window (+%gs)"
              % (len(lost), len(outside), RECOVERY))
        for nm, t0, t1 in faults:
            mine = [r["time"] for r in lost if t0 - 0.5 <= r["time"] <= t1 + RECOVERY]
            print("  %-18s at +%5.0fs (%4.1fs): lost %4d%s" % (
                nm, t0 - t_start, t1 - t0, len(mine),
                ", all replicated again %.1fs after it ended" % (max(mine) - t1) if mine else ""))
        warm = [x for x in rss if x[0] >= t_start + 20]
        if warm:
            print("RSS after warm-up: tcpcopy %d kB, intercept %d kB; at the end: tcpcopy %d kB, "
                  "intercept %d kB (both restarted during the run)"
                  % (warm[0][1], warm[0][2], rss[-1][1], rss[-1][2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
