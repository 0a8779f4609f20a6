"""Soak, short form (issue 12): steady short connections for about two minutes
while, in turn, the target's server restarts, intercept is killed and
restarted, tcpcopy is killed (a small supervisor restarts it, as systemd
would), the control link is cut for 10 s, and the logs are rotated.

After each fault, every new request reaches the target again within 10 s;
every request lost falls inside a fault window; memory stays flat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.lab.netns import LabError
from tests.lab.services import HttpServerProc

from .procs import Proc, intercept

pytestmark = pytest.mark.lab

RECOVERY = 10.0
CONTROL_PORT = "36524"


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Supervisor:
    """Restarts tcpcopy 0.5 s after it dies, as Restart=always would."""

    def __init__(self, lab, workdir, log_path) -> None:
        self.lab, self.workdir, self.log_path = lab, workdir, log_path
        self.n = 0
        self.restarts = 0
        self.stopping = False
        self.proc = self._start()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _start(self) -> Proc:
        self.n += 1
        t, a = self.lab.ip["target"], self.lab.ip["assistant"]
        return Proc(self.lab, "online", "tcpcopy",
                    ["-x", f"80-{t}:80", "-s", a, "-L", "-l", str(self.log_path)],
                    self.workdir, f"tc-soak-{self.n}")

    def _watch(self) -> None:
        while not self.stopping:
            if self.proc.proc.poll() is not None and not self.stopping:
                time.sleep(0.5)
                try:
                    self.proc = self._start()
                except LabError:  # it exited again at start: try again, as systemd would
                    continue
                finally:
                    self.restarts += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.proc.stop()


def test_soak_short(lab, http_servers, workdir):
    tc_log, ic_log = workdir / "soak-tcpcopy.log", workdir / "soak-intercept.log"
    for p in (tc_log, ic_log):
        for old in p.parent.glob(p.name + "*"):
            old.unlink()
    ic = intercept(lab, workdir, name="ic-soak-1", extra=["-l", str(ic_log)])
    sup = Supervisor(lab, workdir, tc_log)
    faults = []  # (name, start, end)
    servers = dict(http_servers)
    start_rec = {h: len(s.records()) for h, s in servers.items()}
    online_server = servers["online"]
    client = lab.popen("client", [sys.executable, "-m", "tests.lab.client", "--host",
                                  lab.ip["online"], "--requests", "100000", "--connections", "2",
                                  "--mode", "close", "--delay", "0.05", "--tag", "soak"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cut = [("-I", "INPUT", "-p", "tcp", "--dport", CONTROL_PORT),
           ("-I", "OUTPUT", "-p", "tcp", "--sport", CONTROL_PORT)]
    target_records = []
    try:
        time.sleep(8.0)  # warm-up
        rss_warm = {"tcpcopy": _rss_kb(sup.proc.proc.pid)}

        # 1. the target's server restarts (2 s down)
        t0 = time.time()
        target_records += servers["target"].records()[start_rec["target"]:]
        servers["target"].stop()
        time.sleep(2.0)
        servers["target"] = HttpServerProc(lab, "target", workdir, name="target-soak2")
        start_rec["target"] = 0
        faults.append(("target restart", t0, time.time()))
        time.sleep(14.0)

        # 2. intercept killed and restarted (tcpcopy runs with -L)
        t0 = time.time()
        ic.proc.send_signal(signal.SIGKILL)
        ic.stop()
        time.sleep(1.0)
        ic = intercept(lab, workdir, name="ic-soak-2", extra=["-l", str(ic_log)])
        faults.append(("intercept restart", t0, time.time()))
        time.sleep(14.0)

        # 3. tcpcopy killed; the supervisor starts it again
        t0 = time.time()
        old = sup.proc
        old.proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 20
        while sup.proc is old and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.proc is not old, "the supervisor did not restart tcpcopy"
        faults.append(("tcpcopy restart", t0, time.time()))
        time.sleep(8.0)
        rss_warm["tcpcopy"] = _rss_kb(sup.proc.proc.pid)  # a new process: warm again
        rss_warm["intercept"] = _rss_kb(ic.proc.pid)
        time.sleep(6.0)

        # 4. the control link cut for 10 s (packets dropped both ways on the assistant)
        t0 = time.time()
        for rule in cut:
            lab.run("assistant", ["iptables", *rule, "-j", "DROP"])
        time.sleep(10.0)
        for rule in cut:
            lab.run("assistant", ["iptables", "-D", *rule[1:], "-j", "DROP"])
        faults.append(("control link cut", t0, time.time()))
        time.sleep(14.0)

        # 5. logs rotated (renamed, SIGUSR1): not a fault for replication
        t0 = time.time()
        for p, pid in ((tc_log, sup.proc.proc.pid), (ic_log, ic.proc.pid)):
            os.rename(p, str(p) + ".1")
            os.kill(pid, signal.SIGUSR1)
        faults.append(("logs rotated", t0, t0))
        time.sleep(12.0)
        t_end = time.time()
        rss_end = {"tcpcopy": _rss_kb(sup.proc.proc.pid), "intercept": _rss_kb(ic.proc.pid)}
        lab.stop(client)
        time.sleep(2.0)
        alive = sup.proc.proc.poll() is None and ic.proc.poll() is None
    finally:
        if client.poll() is None:
            lab.stop(client)
        sup.stop()
        ic.stop()
        for rule in cut:
            lab.run("assistant", ["iptables", "-D", *rule[1:], "-j", "DROP"], check=False)
        if "target" in servers and servers["target"] is not http_servers["target"]:
            target_records += servers["target"].records()
            servers["target"].stop()
            http_servers["target"] = HttpServerProc(lab, "target", workdir, name="target-soak3")
    assert alive
    online = [r for r in online_server.records()[start_rec["online"]:]
              if "/soak/" in r["path"] and r["time"] < t_end - 1.0]
    got = {r["path"] for r in target_records if "/soak/" in r["path"]}
    lost = [r for r in online if r["path"] not in got]
    print(f"\nsoak: {len(online)} requests online, {len(online) - len(lost)} on the target, "
          f"tcpcopy restarts {sup.restarts}, RSS warm {rss_warm} end {rss_end}")
    for name, a, b in faults:
        mine = [r["time"] for r in lost if a - 0.5 <= r["time"] <= b + RECOVERY]
        back = f", all replicated again {max(mine) - b:.1f}s after it ended" if mine else ""
        print(f"  {name}: {b - a:.1f}s, requests lost: {len(mine)}{back}")
    # every lost request falls inside a fault window (or the 10 s after it)
    outside = [r for r in lost
               if not any(a - 0.5 <= r["time"] <= b + RECOVERY for _n, a, b in faults)]
    assert not outside, [(r["path"], r["time"]) for r in outside[:10]]
    # after each fault, replication is back to 100 % of new requests within 10 s
    for i, (name, _a, b) in enumerate(faults):
        nxt = faults[i + 1][1] if i + 1 < len(faults) else t_end - 1.0
        later = [r for r in online if b + RECOVERY < r["time"] < nxt]
        assert later or b + RECOVERY >= nxt, name
        assert all(r["path"] in got for r in later), name
    assert sup.restarts == 1
    for k in rss_end:
        assert rss_end[k] <= rss_warm[k] * 1.10, (k, rss_warm[k], rss_end[k])
    assert "log file reopened" in tc_log.read_text() and "log file reopened" in ic_log.read_text()
