"""tcpcopy -i (AF_PACKET ring) under a burst while it cannot read: kernel drops
are counted and logged with the fix when the ring is too small, and the
default ring holds a one-second stall without losing a request (issue 13).
intercept's ring, sized by its -B, likewise.

tcpcopy is stopped (SIGSTOP) for one second while a client sends requests as
fast as it can, then resumed: the ring alone must hold that second.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import pytest

from pycopy_engine.wire.tcpip import ACK, build_ipv4_tcp
from tests.lab.services import logged_keys, run_client, sent_keys

from .procs import Proc, intercept

pytestmark = pytest.mark.lab

STALL_S = 1.0


def _burst_with_stall(lab, tc, online, requests: int, tag: str) -> dict:
    """``requests`` keep-alive requests on 8 connections, as fast as the
    client goes; once the online server logged 200 of them, tcpcopy is
    stopped for STALL_S."""
    out: dict = {}
    start = len(online.records())

    def client() -> None:
        out.update(run_client(lab, requests=requests, connections=8, mode="keepalive", tag=tag))

    th = threading.Thread(target=client)
    th.start()
    got = len(online.wait_records(start + 200, timeout=30)) - start
    assert got >= 200 and th.is_alive(), "the client finished before the stall"
    os.kill(tc.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(STALL_S)
        during = len(online.records()) - start - got
    finally:
        os.kill(tc.proc.pid, signal.SIGCONT)
    th.join(120)
    assert out.get("ok") == requests, out.get("errors", [])[:3]
    assert during >= 200, f"only {during} requests during the stall: not a burst"
    return out


def _tcpcopy_i(lab, workdir, extra: list, name: str) -> Proc:
    o, t, a = lab.ip["online"], lab.ip["target"], lab.ip["assistant"]
    return Proc(lab, "online", "tcpcopy", ["-x", f"{o}:80-{t}:80", "-s", a, "-i", "eth0", *extra],
                workdir, name)


def _wait_log(tc, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in tc.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    return tc.log()


def test_tiny_ring_drops_are_counted_and_the_warning_names_the_option(lab, workdir, http_servers):
    ic = intercept(lab, workdir, name="intercept-ring-tiny")
    # 1 MB: 8 blocks of 128 KB, each retired after 16 ms however little it
    # holds: the ring holds ~0.13 s of a stalled reader's traffic
    tc = _tcpcopy_i(lab, workdir, ["-B", "1"], "tcpcopy-ring-tiny")
    try:
        log = _wait_log(tc, "ring: TPACKET_V3")
        assert "1024 KB in 8 blocks of 128 KB, block timeout 16 ms" in log
        _burst_with_stall(lab, tc, http_servers["online"], 4000, "rtiny")
        drops = tc.wait_stat("capture_kernel_drops", 1, timeout=10)
        assert drops > 0
        log = _wait_log(tc, "raise -B")
        warn = [ln for ln in log.splitlines() if "the kernel dropped" in ln]
        assert warn, log[-3000:]
        assert "[warn" in warn[0] and "raise -B (the -i capture ring, now 1 MB)" in warn[0]
        n = int(warn[0].split("the kernel dropped ")[1].split(" ")[0])
        assert n > 0
    finally:
        tc.stop()
        ic.stop()
    # the final statistics line reports the counter too; the counter only
    # grows, so it holds what the warning and the earlier reading saw (both
    # can be later than the other: the burst may still be dropping between)
    final = re.findall(r"capture: drops:(\d+),", tc.log())
    assert final and int(final[-1]) >= max(drops, n)


def test_default_ring_holds_a_one_second_stall_without_loss(lab, workdir, http_servers, logs):
    ic = intercept(lab, workdir, name="intercept-ring-default")
    tc = _tcpcopy_i(lab, workdir, [], "tcpcopy-ring-default")
    try:
        log = _wait_log(tc, "ring: TPACKET_V3")
        assert "65536 KB in 512 blocks of 128 KB, block timeout 16 ms: holds 8.0 s" in log
        res = _burst_with_stall(lab, tc, http_servers["online"], 4000, "rdef")
        sent = sorted(sent_keys(res))
        assert logged_keys(logs("online", 4000)) == sent
        target = logs("target", 4000, timeout=30)
        assert logged_keys(target) == sent, f"target has {len(target)} of {len(sent)}"
        time.sleep(0.5)  # one more --stats-interval
        st = tc.stats()
        assert "capture_kernel_drops" in st and st["capture_kernel_drops"] == 0
        assert st["requests_sent"] >= 4000
    finally:
        tc.stop()
        ic.stop()
    assert "the kernel dropped" not in tc.log()


def _blast_answers(lab, count: int) -> None:
    """``count`` answer-like segments (source port 80) from the target to the
    assistant, as fast as a raw socket sends them: what intercept's filter
    captures, without a tcpcopy that would stop sending when intercept stalls."""
    t, a = lab.ip["target"], lab.ip["assistant"]
    src, dst = socket.inet_aton(t), socket.inet_aton(a)
    with lab.inside("target"):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for i in range(count):
            s.sendto(build_ipv4_tcp(src, dst, 80, 20000 + i % 40000, i, 1, ACK, 100), (a, 0))
    finally:
        s.close()


@pytest.mark.parametrize("mb, frames", [(1, 5040), (8, 40320)])
def test_intercept_ring_is_sized_by_B_and_drops_name_it(lab, workdir, mb, frames):
    """intercept -B (new: C's intercept has a fixed 16 MB pcap buffer): 12,000
    answers arrive while intercept is stopped; a 1 MB ring (5,040 frames)
    loses the rest and the warning names -B, an 8 MB one loses nothing."""
    ic = intercept(lab, workdir, name=f"intercept-ring-{mb}", extra=["-B", str(mb)])
    try:
        log = _wait_log(ic, "ring: TPACKET_V2")
        assert f"{mb * 1024} KB in {frames} frames of 208 bytes" in log, log[-2000:]
        ic.wait_ready()
        os.kill(ic.proc.pid, signal.SIGSTOP)
        try:
            _blast_answers(lab, 12000)
        finally:
            os.kill(ic.proc.pid, signal.SIGCONT)
        if mb == 1:
            assert ic.wait_stat("capture_kernel_drops", 1, timeout=10) > 0
            log = _wait_log(ic, "raise -B")
            warn = [ln for ln in log.splitlines() if "the kernel dropped" in ln]
            assert warn and "raise -B (the capture ring, now 1 MB)" in warn[0], log[-2000:]
        else:
            # the segments were captured (what the route table then ignores)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "capture kernel packets:" not in ic.log():
                time.sleep(0.2)
            time.sleep(0.6)  # a few more --stats-interval
            assert ic.stats()["capture_kernel_drops"] == 0
    finally:
        ic.stop()
    if mb != 1:
        assert "the kernel dropped" not in ic.log()
        kernel = re.findall(r"capture kernel packets:(\d+), kernel drops:(\d+)", ic.log())
        assert kernel and int(kernel[-1][0]) > 5040 and kernel[-1][1] == "0", kernel[-3:]
