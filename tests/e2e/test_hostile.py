"""Hostile and broken input on the real processes: garbage on the control
channel in both directions, access control, the shared secret, a SYN flood
under the memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.lab.services import logged_keys, run_client, sent_keys

from .procs import Proc, intercept, tcpcopy

pytestmark = pytest.mark.lab


def py_in(lab, host: str, code: str, timeout: float = 60.0) -> str:
    r = lab.run(host, [sys.executable, "-c", textwrap.dedent(code)], timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_garbage_on_intercept_control_port_only_drops_that_connection(lab, workdir, logs):
    ic = intercept(lab, workdir, name="ic-garbage")
    tc = tcpcopy(lab, workdir, name="tc-garbage")
    try:
        a = lab.ip["assistant"]
        out = py_in(lab, "online", f"""
            import socket, time
            results = []
            for payload in (b"GET / HTTP/1.0\\r\\n\\r\\n", b"\\0" * 6 + b"\\0\\6" + b"\\0" * 6 + b"\\x01" * 14 + b"\\xff" * 14):
                s = socket.create_connection(("{a}", 36524), timeout=5)
                s.sendall(payload)
                s.settimeout(5)
                try:
                    results.append(s.recv(100) == b"")
                except OSError:
                    results.append(True)
            # a half message that never completes must not block anybody
            lazy = socket.create_connection(("{a}", 36524), timeout=5)
            lazy.sendall(b"\\0" * 7)
            print(results)
            time.sleep(0.2)
        """)
        assert out.strip() == "[True, True]"  # both garbage connections were closed by intercept
        res = run_client(lab, requests=200, connections=4, mode="close", tag="garb")
        target = logs("target", 200)
        time.sleep(0.3)
        assert logged_keys(logs("target")) == sent_keys(res)
        log = ic.log()
        assert "too old" in log and "unknown control message type" in log
        assert ic.wait_stat("control_protocol_errors", 2) == 2
        assert target
    finally:
        tc.stop()
        ic.stop()


FAKE_INTERCEPT = """
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 36600)); srv.listen(8)
conns = []
end = time.time() + float(sys.argv[1])
srv.settimeout(0.2)
while time.time() < end:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    c.recv(14)
    c.sendall(bytes.fromhex(sys.argv[2]))   # garbage frames
    conns.append(c)
"""


@pytest.mark.parametrize("garbage,expect", [
    ("ffff" + "78" * 100, "link_dropped"),     # a count far above 16: the framing is lost
    ("0001" + "60" * 64, "record_skipped"),    # a well-framed record that is not IPv4
])
def test_garbage_from_an_intercept_drops_that_link_only(lab, workdir, logs, garbage, expect):
    fake_path = Path(workdir) / "fake_intercept.py"
    fake_path.write_text(FAKE_INTERCEPT)
    fake = lab.popen("assistant", [sys.executable, str(fake_path), "30", garbage])
    ic = intercept(lab, workdir, name="ic-realpeer")
    time.sleep(0.5)
    a = lab.ip["assistant"]
    tc = tcpcopy(lab, workdir, extra=["-s", f"{a}:36524,{a}:36600"], name="tc-fakepeer")
    try:
        res = run_client(lab, requests=200, connections=4, mode="close", tag="fakepeer")
        logs("target", 200)
        time.sleep(0.3)
        assert logged_keys(logs("target")) == sent_keys(res)
        assert tc.proc.poll() is None
        st = tc.stats()
        if expect == "link_dropped":
            assert tc.wait_stat("control_lost") >= 1 and tc.wait_stat("control_protocol_errors") >= 1
            log = tc.log()
            assert f"intercept {a}:36600: num:65535 > threshold" in log
        else:
            assert tc.wait_stat("drop:record_not_tcp") >= 1 and st.get("control_lost", 0) == 0
    finally:
        tc.stop()
        ic.stop()
        lab.stop(fake)


def test_allow_list_refuses_others(lab, workdir):
    ic = intercept(lab, workdir, extra=["--allow", "10.99.0.0/16"], name="ic-allow")
    try:
        p = Proc(lab, "online", "tcpcopy", ["-x", f"80-{lab.ip['target']}:80", "-s",
                                            lab.ip["assistant"]], workdir, "tc-allow", ready=False)
        assert p.proc.wait(timeout=20) == 1
        assert "all intercept connections lost" in p.log()
        p.stop()
        assert "not in --allow" in ic.log()
        assert ic.wait_stat("control_refused:not_allowed") >= 1
    finally:
        ic.stop()


def test_shared_secret(lab, workdir, logs):
    good = Path(workdir) / "secret"
    good.write_text("correct horse battery staple\n")
    bad = Path(workdir) / "secret-bad"
    bad.write_text("incorrect horse battery staple\n")
    ic = intercept(lab, workdir, extra=["--secret-file", str(good)], name="ic-secret")
    try:
        for name, extra in (("tc-nosecret", []), ("tc-badsecret", ["--secret-file", str(bad)])):
            p = Proc(lab, "online", "tcpcopy", ["-x", f"80-{lab.ip['target']}:80", "-s",
                                                lab.ip["assistant"], *extra], workdir, name,
                     ready=False)
            assert p.proc.wait(timeout=20) == 1, p.log()
            p.stop()
        log = ic.log()
        assert "authentication required" in log and "wrong secret" in log
        tc = tcpcopy(lab, workdir, extra=["--secret-file", str(good)], name="tc-secret")
        try:
            res = run_client(lab, requests=100, connections=4, mode="close", tag="secret")
            logs("target", 100)
            time.sleep(0.3)
            assert logged_keys(logs("target")) == sent_keys(res)
        finally:
            tc.stop()
    finally:
        ic.stop()


FLOOD = """
import socket, sys, time
sys.path.insert(0, ".")
from pycopy_engine.wire.tcpip import build_ipv4_tcp, SYN, syn_options
src, dst, dport = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2]), int(sys.argv[3])
n, rate = int(sys.argv[4]), float(sys.argv[5])  # SYNs per second: a flood tcpcopy's capture can take in whole
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
opts = syn_options(1460, 7, True, (1, 0))
t0 = time.monotonic()
for i in range(n):   # n distinct 4-tuples, one SYN each, never answered
    ahead = t0 + i / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
    port = 1024 + i % 64000
    s.sendto(build_ipv4_tcp(src, dst, port, dport, i * 7919, 0, SYN, 65535, opts, b"", i),
             (sys.argv[2], 0))
"""


def tagged(logs, tag: str, n: int, timeout: float = 20.0) -> list:
    """The target's records of requests tagged ``tag``, once there are ``n`` (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        got = [r for r in logs("target") if f"/{tag}/" in r["path"]]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


class RssSampler(threading.Thread):
    """Reads VmRSS of a real process from /proc every few milliseconds."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self.halt.is_set():
            try:
                with open(path) as f:
                    kb = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
            except (OSError, StopIteration):
                return
            self.samples.append(kb * 1024)
            time.sleep(self.every)

    def stop(self) -> list[int]:
        self.halt.set()
        self.join(5)
        return self.samples


SILENT_LISTENER = """
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 81))
s.listen(65535)  # completes every handshake and never accepts nor reads
print("listening", flush=True)
time.sleep(600)
"""


def test_syn_flood_keeps_measured_rss_under_the_bound(lab, workdir, logs):
    """A 20,000-tuple SYN flood against online port 81 with -m 128 and -n 2: 40,000
    replayed sessions that the target completes and tcpcopy would keep for the
    keepalive timeout, well over 128 MB.  The RSS of the real tcpcopy process,
    read from /proc all along, never exceeds 128 MB; the flood's tuples are what
    is evicted; keep-alive clients that were talking all along lose nothing, and
    new sessions after the flood are replayed whole."""
    limit = 128 << 20
    o, c, t = lab.ip["online"], lab.ip["client"], lab.ip["target"]
    for key in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"):
        lab.sysctl("target", key, 65535)  # the target holds all of the flood's connections
    silent = lab.popen("target", [sys.executable, "-c", SILENT_LISTENER],
                       stdout=subprocess.PIPE, text=True)
    assert silent.stdout.readline().strip() == "listening"
    ic = Proc(lab, "assistant", "intercept", ["-i", "eth0", "-F", "tcp and src port (80 or 81)"],
              workdir, "ic-flood")
    tc = Proc(lab, "online", "tcpcopy", ["-x", f"80-{t}:80,81-{t}:81", "-s", lab.ip["assistant"],
                                         "-m", "128", "-n", "2"], workdir, "tc-flood")
    sampler = RssSampler(tc.proc.pid)
    sampler.start()
    flood_path = Path(workdir) / "flood.py"
    flood_path.write_text(FLOOD)
    keep = lab.popen("client", [
        sys.executable, "-m", "tests.lab.client", "--host", o, "--requests", "600",
        "--connections", "4", "--mode", "keepalive", "--delay", "0.1", "--tag", "floodka",
        "--out", str(Path(workdir) / "floodka.json")])
    try:
        assert tc.wait_stat("requests_sent", 8, timeout=20) >= 8  # keep-alive sessions talk
        lab.run("client", [sys.executable, str(flood_path), c, o, "81", "20000", "2000"],
                timeout=120)
        assert tc.wait_stat("syn_cnt", 20000 + 4, timeout=30) >= 20000 + 4  # + the 4 clients'
        assert keep.wait(timeout=120) == 0
        time.sleep(1.0)
        samples = sampler.stop()
        st = tc.stats()
        assert len(samples) >= 500, len(samples)
        peak = max(samples)
        print(f"RSS: {len(samples)} samples, peak {peak / 1048576:.1f} MB; sessions opened "
              f"{st['sessions_opened']}, evicted {st.get('evicted:memory_limit')} "
              f"{ {k: v for k, v in st.items() if k.startswith('evicted_group')} }")
        assert peak <= limit, f"RSS peaked at {peak / 1048576:.1f} MB"
        assert st["memory_pressure"] >= 1 and st["evicted:memory_limit"] > 0
        # the flood's tuples went, not the talking keep-alive sessions
        assert st["evicted_group:syn_only"] > 0 and st.get("evicted_group:active", 0) == 0, st
        ka = json.loads((Path(workdir) / "floodka.json").read_text())
        got = tagged(logs, "floodka", 2 * len(ka["requests"]))
        assert logged_keys(got) == sorted(sent_keys(ka) * 2)  # -n 2: each request twice
        assert tc.proc.poll() is None
        # and after the flood new sessions are replayed whole
        res = run_client(lab, requests=100, connections=4, mode="close", tag="flood")
        got = tagged(logs, "flood", 200)
        assert logged_keys(got) == sorted(sent_keys(res) * 2)
    finally:
        sampler.halt.set()
        lab.stop(keep)
        tc.stop()
        ic.stop()
        lab.stop(silent)


def test_slow_tcpcopy_never_stalls_the_others(lab, workdir, logs):
    """A tcpcopy that registers sessions and then never reads: its records are
    dropped and counted, while the real tcpcopy's replication stays whole."""
    ic = intercept(lab, workdir, extra=["--peer-buffer", "64"], name="ic-slow")
    tc = tcpcopy(lab, workdir, name="tc-slowpeer")
    a, t, c = lab.ip["assistant"], lab.ip["target"], lab.ip["client"]
    slow = lab.popen("online", [sys.executable, "-c", textwrap.dedent(f"""
        import socket, sys, time
        sys.path.insert(0, ".")
        from pycopy_engine.wire.control import HELLO, encode_client_add
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("{a}", 36524))
        msgs = [encode_client_add(socket.inet_aton("{c}"), p, socket.inet_aton("{t}"), 80)
                for p in range(5000, 25000)]
        s.sendall(HELLO + b"".join(msgs))
        print("registered", flush=True)
        time.sleep(60)   # and never read
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert slow.stdout.readline().strip() == "registered"
        time.sleep(0.5)
        # the target answers 20,000 SYNs for the slow peer's sessions: its records pile up
        py_in(lab, "client", f"""
            import socket, sys
            sys.path.insert(0, ".")
            from pycopy_engine.wire.tcpip import build_ipv4_tcp, SYN
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            src, dst = socket.inet_aton("{c}"), socket.inet_aton("{t}")
            for p in range(5000, 25000):
                s.sendto(build_ipv4_tcp(src, dst, p, 80, p * 7919, 0, SYN, 65535), ("{t}", 0))
        """)
        res = run_client(lab, requests=300, connections=4, mode="close", tag="slowpeer")
        logs("target", 300)
        time.sleep(0.3)
        assert logged_keys([r for r in logs("target") if "/slowpeer/" in r["path"]]) == sent_keys(res)
        assert ic.wait_stat("drop:records_peer_slow") > 0
        assert slow.poll() is None and tc.proc.poll() is None
    finally:
        lab.stop(slow)
        tc.stop()
        ic.stop()
