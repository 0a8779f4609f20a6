"""Log rotation (issue 12): the shipped logrotate configuration, run by the real
logrotate against live tcpcopy and intercept processes in the lab; SIGUSR1
makes them reopen -l, no line is lost or cut, the processes keep running."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.netns import REPO_ROOT

from .procs import intercept, tcpcopy

pytestmark = pytest.mark.lab

LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \+\d{3} \[[a-z]+\] ")
SHIPPED = REPO_ROOT / "deploy" / "logrotate" / "pycopy"


def _times(path: Path, marker: str) -> list:
    out = []
    for line in path.read_text().splitlines():
        assert LINE.match(line), f"{path.name}: cut or foreign line {line!r}"
        if marker in line:
            m = re.match(r"(\S+ \S+) \+(\d{3})", line)
            assert m
            out.append(time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S"))
                       + int(m.group(2)) / 1000)
    return out


def test_shipped_config_is_valid_for_logrotate():
    r = subprocess.run(["logrotate", "-d", "-s", "/dev/null", str(SHIPPED)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "/var/log/pycopy/tcpcopy.log" in r.stderr and "/var/log/pycopy/intercept.log" in r.stderr


def test_logrotate_renames_and_sigusr1_reopens_without_losing_lines(lab, http_servers, workdir):
    logs = {n: workdir / f"rot-{n}.log" for n in ("tcpcopy", "intercept")}
    for p in logs.values():
        for old in p.parent.glob(p.name + "*"):
            old.unlink()
    ic = intercept(lab, workdir, name="ic-rot", extra=["-l", str(logs["intercept"])])
    tc = tcpcopy(lab, workdir, name="tc-rot", extra=["-l", str(logs["tcpcopy"])])
    procs = {"tcpcopy": tc, "intercept": ic}
    client = lab.popen("client", [sys.executable, "-m", "tests.lab.client", "--host",
                                  lab.ip["online"], "--requests", "400", "--connections", "2",
                                  "--mode", "close", "--delay", "0.02", "--tag", "rot"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        # the shipped file, with this lab's paths and PIDs instead of systemd's units
        conf = SHIPPED.read_text()
        conf = conf.replace("/var/log/pycopy/tcpcopy.log", str(logs["tcpcopy"]))
        conf = conf.replace("/var/log/pycopy/intercept.log", str(logs["intercept"]))
        conf = conf.replace("create 0640 root adm", "create 0640 root root")
        conf = re.sub(r"systemctl kill .*pycopy-tcpcopy\.service.*",
                      f"kill -USR1 {tc.proc.pid}", conf)
        conf = re.sub(r"systemctl kill .*pycopy-intercept\.service.*",
                      f"kill -USR1 {ic.proc.pid}", conf)
        assert f"kill -USR1 {tc.proc.pid}" in conf and f"kill -USR1 {ic.proc.pid}" in conf
        cfile = workdir / "rot.conf"
        cfile.write_text(conf)
        for _ in range(2):  # twice: the second also compresses the first (delaycompress)
            r = subprocess.run(["logrotate", "-f", "-s", str(workdir / "rot.state"), str(cfile)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            deadline = time.monotonic() + 10
            # (no "create": each file exists again once its process has reopened it)
            while not all(p.exists() and "log file reopened" in p.read_text()
                          for p in logs.values()):
                assert time.monotonic() < deadline, "no reopen line in the new files"
                time.sleep(0.05)
            time.sleep(1.5)
        assert client.wait(60) == 0
    finally:
        if client.poll() is None:
            lab.stop(client)
        alive = {n: p.proc.poll() is None for n, p in procs.items()}
        tc.stop()
        ic.stop()
    assert alive == {"tcpcopy": True, "intercept": True}
    for name, path in logs.items():
        gz = Path(str(path) + ".2.gz")
        first = Path(str(path) + ".1")
        assert gz.exists() and first.exists() and path.exists(), sorted(path.parent.iterdir())
        plain = subprocess.run(["gunzip", "-c", str(gz)], capture_output=True, text=True).stdout
        old = workdir / f"{path.name}.2.txt"
        old.write_text(plain)
        # the statistics lines come every 0.2 s: no gap across either rotation
        marker = "active:" if name == "tcpcopy" else "records sent:"
        times = []
        for part in (old, first, path):
            t = _times(part, marker)
            assert t, f"{part.name} has no statistics line"
            times += t
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert min(gaps) >= 0 and max(gaps) < 0.6, (name, max(gaps))
        assert "log file reopened (SIGUSR1)" in first.read_text()
        assert "log file reopened (SIGUSR1)" in path.read_text()


def test_sighup_still_stops_tcpcopy_as_in_c(lab, workdir):
    ic = intercept(lab, workdir, name="ic-hup")
    tc = tcpcopy(lab, workdir, name="tc-hup")
    try:
        tc.proc.send_signal(signal.SIGHUP)
        tc.proc.wait(10)  # SIGHUP means stop, as in C (also when the parent ignored it: nohup)
        assert tc.proc.returncode == 0, tc.log()[-2000:]
    finally:
        tc.stop()
        ic.stop()
