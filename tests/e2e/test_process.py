"""How the processes behave as processes: daemon and PID file, missing
CAP_NET_RAW, losing intercept without -L, resetting live sessions at exit."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from .procs import intercept, tcpcopy

pytestmark = pytest.mark.lab


def _wait(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_daemon_writes_pid_file_and_removes_it(lab, workdir):
    ic = intercept(lab, workdir, name="ic-daemon")
    pidfile = Path(workdir) / "tcpcopy.pid"
    log = Path(workdir) / "tcpcopy-daemon.log"
    try:
        r = lab.run("online", [sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "-x",
                               f"80-{lab.ip['target']}:80", "-s", lab.ip["assistant"], "-d",
                               "-P", str(pidfile), "-l", str(log)], timeout=30)
        assert r.returncode == 0  # the parent returns at once
        assert _wait(pidfile.exists)
        pid = int(pidfile.read_text())
        assert os.path.exists(f"/proc/{pid}")
        assert os.getsid(pid) == pid or os.getsid(pid) != os.getsid(0)  # detached session
        assert _wait(lambda: "connected to intercept" in log.read_text())
        os.kill(pid, signal.SIGTERM)
        assert _wait(lambda: not os.path.exists(f"/proc/{pid}"))
        assert not pidfile.exists()
        assert "signal 15 received" in log.read_text()
    finally:
        ic.stop()


def test_without_cap_net_raw_one_line_and_exit_1(lab, workdir):
    r = lab.run("online", ["setpriv", "--inh-caps=-all", "--bounding-set=-net_raw", "--",
                           sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "-x",
                           f"80-{lab.ip['target']}:80", "-s", lab.ip["assistant"]],
                check=False, timeout=30)
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "CAP_NET_RAW" in lines[0], r.stderr
    r = lab.run("assistant", ["setpriv", "--inh-caps=-all", "--bounding-set=-net_raw", "--",
                              sys.executable, "-m", "pycopy_engine.cli.intercept", "-F",
                              "tcp and src port 80"], check=False, timeout=30)
    assert r.returncode == 1 and "CAP_NET_RAW" in r.stderr


def test_intercept_lost_without_L_is_reported_and_exits_1(lab, workdir):
    ic = intercept(lab, workdir, name="ic-lost")
    tc = tcpcopy(lab, workdir, name="tc-lost")
    ic.stop()
    assert tc.proc.wait(timeout=15) == 1
    log = tc.log()
    assert "connection to intercept" in log and "lost" in log
    assert "all intercept connections lost" in log
    tc.stop()


def test_live_sessions_are_reset_at_exit(lab, workdir, http_servers):
    ic = intercept(lab, workdir, name="ic-exit")
    tc = tcpcopy(lab, workdir, name="tc-exit")
    try:
        client = lab.popen("client", [
            sys.executable, "-m", "tests.lab.client", "--host", lab.ip["online"], "--requests",
            "4", "--connections", "4", "--mode", "keepalive", "--delay", "8", "--tag", "exit",
            "--out", str(Path(workdir) / "exit.json")])

        def established() -> int:
            out = lab.run("target", ["ss", "-Htn", "state", "established", "sport", "= :80"]).stdout
            return len([x for x in out.splitlines() if x.strip()])

        assert _wait(lambda: established() == 4)
        tc.stop()
        assert _wait(lambda: established() == 0, 5.0)
        assert "reset 4 live session(s) at exit" in tc.log()
        lab.stop(client)
    finally:
        ic.stop()


