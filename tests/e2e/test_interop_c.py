"""Live interoperability with the original C TCPCopy 1.0 tools, in the lab.

pycopy's tcpcopy against an unmodified C ``intercept`` on the assistant, and
pycopy's intercept serving an unmodified C ``tcpcopy`` on online (both C tools
in their default build: distributed mode, combined response framing, no
payload; the C tcpcopy captures with a raw socket).  The wire format itself is
checked byte for byte elsewhere against golden captures; here real traffic
goes through both mixed pairs and the target's log must equal what the client
sent.

Uploads are checked only through the C intercept: the C tcpcopy itself
corrupts client segments larger than -M (with GRO on, each MTU slice it makes
carries the first slice's bytes; it does so with a C intercept too), so an
upload test against it would test the C tool, not the pairing.

The C binaries are not part of this repository and are not built by it: point
``PYCOPY_C_TOOLS`` at a directory holding ``tcpcopy`` and ``intercept`` built
from the upstream sources, otherwise every test here is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import List, Optional

import pytest

from tests.lab.netns import Lab, LabError
from tests.lab.services import logged_keys, run_client, sent_keys

from .procs import intercept, tcpcopy

C_TOOLS = os.environ.get("PYCOPY_C_TOOLS", "")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        not C_TOOLS,
        reason="PYCOPY_C_TOOLS is not set: set PYCOPY_C_TOOLS=/dir/with/tcpcopy-and-intercept-"
        "binaries (the C TCPCopy 1.0 tools) to run the live interop check",
    ),
]


class CProc:
    """One C tool in a lab host, logging to ``<workdir>/<name>.log`` (its -l)."""

    def __init__(self, lab: Lab, host: str, binary: str, args: List[str], workdir: Path,
                 name: str, ready_line: str) -> None:
        self.lab = lab
        self.name = name
        self.log_path = workdir / f"{name}.log"
        if self.log_path.exists():
            self.log_path.unlink()
        self._out = open(workdir / f"{name}.out", "w")
        path = Path(C_TOOLS) / binary
        self.proc = lab.popen(host, [str(path), *args, "-l", str(self.log_path)],
                              stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while ready_line not in self.log():
            if self.proc.poll() is not None:
                raise LabError(f"{name} exited {self.proc.returncode}: {self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"{name} not ready after 15 s: {self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        code = self.lab.stop(self.proc)
        self._out.close()
        return code


@pytest.fixture(scope="module")
def c_tools() -> Path:
    d = Path(C_TOOLS)
    missing = [b for b in ("tcpcopy", "intercept") if not os.access(d / b, os.X_OK)]
    if missing:
        pytest.fail(f"PYCOPY_C_TOOLS={C_TOOLS}: no executable {', '.join(missing)} there")
    return d


def settle(logs, host: str, n: int, timeout: float = 30.0):
    logs(host, n, timeout)
    time.sleep(1.0)
    return logs(host)


@pytest.fixture()
def c_intercept(lab, workdir, c_tools):
    """The C intercept on the assistant, as the e2e helpers start pycopy's."""
    procs: List[CProc] = []

    def start(name: str = "c-intercept") -> CProc:
        p = CProc(lab, "assistant", "intercept", ["-i", "eth0", "-F", "tcp and src port 80"],
                  workdir, name, ready_line="pcap_set_buffer_size")
        procs.append(p)
        time.sleep(0.3)  # pcap_activate follows the line we waited for
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture()
def c_tcpcopy(lab, workdir, c_tools):
    procs: List[CProc] = []

    def start(extra: Optional[List[str]] = None, name: str = "c-tcpcopy") -> CProc:
        t, a = lab.ip["target"], lab.ip["assistant"]
        p = CProc(lab, "online", "tcpcopy", ["-x", f"80-{t}:80", "-s", a, *(extra or [])],
                  workdir, name, ready_line="connect to remote server")
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def _mixed_traffic(lab, logs, n: int = 500):
    ka = run_client(lab, requests=n, connections=8, mode="keepalive", tag="ka")
    sc = run_client(lab, requests=n, connections=8, mode="close", tag="sc")
    assert ka["ok"] == n and sc["ok"] == n, (ka["errors"][:3], sc["errors"][:3])
    sent = sorted(sent_keys(ka) + sent_keys(sc))
    assert logged_keys(logs("online", 2 * n)) == sent
    return sent, settle(logs, "target", 2 * n)


def test_c_intercept_serves_pycopy_tcpcopy(lab, workdir, c_intercept, logs):
    ic = c_intercept()
    tc = tcpcopy(lab, workdir, name="tcpcopy-vs-c")
    try:
        sent, target = _mixed_traffic(lab, logs)
        assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
        st = tc.stats()
        assert st["sessions_opened"] == 508 and st.get("rst_sent:handshake_timeout", 0) == 0
        assert st.get("control_reconnects", 0) == 0
    finally:
        tc.stop()
    log = ic.log()
    # pycopy's version message is accepted as INTERNAL_VERSION 6, new-style (14-byte) client
    assert "not compatible" not in log and "client too old" not in log
    assert log.count("it adds fd:") == 2  # -C default: two control links
    assert "fd is null after session is created" not in log


def test_c_intercept_serves_pycopy_tcpcopy_with_two_workers(lab, workdir, c_intercept, logs):
    """tcpcopy --workers 2: each worker is a tcpcopy of its own to the C intercept
    (its own two links, hello and CLIENT_ADDs)."""
    ic = c_intercept(name="c-intercept-workers")
    o = lab.ip["online"]
    tc = tcpcopy(lab, workdir, name="tcpcopy-workers-vs-c",
                 extra=["-i", "eth0", "--workers", "2", "-x", f"{o}:80-{lab.ip['target']}:80"])
    try:
        deadline = time.monotonic() + 20
        while "all 2 workers ready" not in tc.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        sent, target = _mixed_traffic(lab, logs)
        assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
        st = tc.stats()
        assert st["sessions_opened"] == 508 and st.get("rst_sent:handshake_timeout", 0) == 0
    finally:
        tc.stop()
    assert ic.log().count("it adds fd:") == 4  # two links per worker


def test_pycopy_intercept_serves_c_tcpcopy(lab, workdir, c_tcpcopy, logs):
    ic = intercept(lab, workdir, name="intercept-vs-c")
    try:
        tc = c_tcpcopy()
        assert ic.wait_stat("tcpcopy_links", 2, timeout=10) >= 2
        time.sleep(0.3)  # the C tcpcopy opens its capture socket after the links
        sent, target = _mixed_traffic(lab, logs)
        assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
        st = ic.stats()
        assert st["route_add"] == 508
        tc.stop()
    finally:
        ic.stop()
    log = tc.log()
    # the C tcpcopy read every combined frame (a count > 16 would be "num:%d > threshold")
    assert "threshold" not in log and "Recv socket" not in log
    m = re.search(r"conns:(\d+),resp:(\d+)", log)
    assert m and int(m.group(1)) == 508, log[-2000:]


def test_c_intercept_amplified_pycopy_tcpcopy(lab, workdir, c_intercept, logs):
    c_intercept(name="c-intercept-amp")
    tc = tcpcopy(lab, workdir, extra=["-n", "3"], name="tcpcopy-amp-vs-c")
    try:
        res = run_client(lab, requests=300, connections=6, mode="close", tag="camp")
        assert res["ok"] == 300
        target = settle(logs, "target", 900)
        assert logged_keys(target) == sorted(sent_keys(res) * 3)
    finally:
        tc.stop()


def test_c_intercept_uploads_and_downloads_byte_exact(lab, workdir, c_intercept, logs):
    c_intercept(name="c-intercept-updown")
    tc = tcpcopy(lab, workdir, name="tcpcopy-updown-vs-c")
    try:
        up = run_client(lab, requests=20, connections=2, mode="keepalive", kind="upload",
                        tag="cup")
        down = run_client(lab, requests=10, connections=2, mode="keepalive", kind="download",
                          tag="cdn")
        assert up["ok"] == 20 and down["ok"] == 10
        target = settle(logs, "target", 30)
        assert logged_keys(target) == sorted(sent_keys(up) + sent_keys(down))
        assert tc.stats()["resp_bytes"] >= 10 * (1 << 20)
    finally:
        tc.stop()
