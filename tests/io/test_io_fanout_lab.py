"""PACKET_FANOUT for real, in the netns lab: two AF_PACKET captures in one
fanout group (the way ``--workers`` shares the capture) together see every
packet exactly once, each flow on one of them only, and both carry flows.

A third capture outside the group is the reference: it sees everything.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from collections import Counter

import pytest

from pycopy_engine.io import bpf, fanoutids
from pycopy_engine.io.capture import Capture, open_packet_capture
from pycopy_engine.io.capture_base import (
    FANOUT_DEFAULT_MODE,
    PACKET_FANOUT_LB,
    FanoutError,
    fanout_arg,
)
from pycopy_engine.io.workers import Supervisor
from tests.lab.services import run_client

pytestmark = pytest.mark.lab


def _drain_all(caps: list[Capture], quiet: float = 0.4, timeout: float = 10.0) -> list[list[bytes]]:
    got: list[list[bytes]] = [[] for _ in caps]
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet:
        select.select(caps, [], [], 0.05)
        for i, cap in enumerate(caps):
            if cap.read_batch(lambda p, out=got[i]: out.append(bytes(p))):
                quiet_since = time.monotonic()
    return got


def _flow(pkt: bytes) -> tuple:
    ihl = (pkt[0] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", pkt, ihl)
    return (socket.inet_ntoa(pkt[12:16]), sport, socket.inet_ntoa(pkt[16:20]), dport)


@pytest.mark.parametrize("version", [2, 3, 0], ids=["ring-v2", "ring-v3", "recvmmsg"])
def test_two_fanout_members_share_every_packet_once_by_flow(lab, http_servers, version):
    prog = bpf.compile_filter("tcp and dst port 80")
    group = (os.getpid() + version) & 0xFFFF
    with lab.inside("online"):
        opts = {"ring": bool(version), "version": version or None}
        members = [
            open_packet_capture(["eth0"], prog, fanout=(group, FANOUT_DEFAULT_MODE), **opts)
            for _ in range(2)
        ]
        ref = open_packet_capture(["eth0"], prog, **opts)
    caps = [*members, ref]
    try:
        # 40 short connections: 40 flows (client ports), mixed with keep-alive
        res = run_client(lab, requests=40, connections=4, mode="close", tag=f"fan{version}")
        assert res["ok"] == 40
        res = run_client(lab, requests=40, connections=8, mode="keepalive", tag=f"fka{version}")
        assert res["ok"] == 40
        a, b, seen = _drain_all(caps)
        assert len(seen) >= 48 * 3  # at least SYN, request and ACK per connection
        # every packet exactly once across the group
        assert Counter(a) + Counter(b) == Counter(seen)
        flows_a = {_flow(p) for p in a}
        flows_b = {_flow(p) for p in b}
        assert not flows_a & flows_b, "a flow was split between the members"
        assert flows_a and flows_b, "one member got every flow"
        assert len(flows_a | flows_b) == 48
        for cap in caps:
            assert cap.kernel_stats()["drops"] == 0
    finally:
        for cap in caps:
            cap.close()


def test_a_member_with_another_mode_is_refused(lab):
    prog = bpf.compile_filter("tcp")
    group = (os.getpid() + 7) & 0xFFFF
    with lab.inside("online"):
        first = open_packet_capture(["eth0"], prog, fanout=(group, FANOUT_DEFAULT_MODE))
        try:
            with pytest.raises(FanoutError, match=f"PACKET_FANOUT group {group}"):
                open_packet_capture(["eth0"], prog, fanout=(group, PACKET_FANOUT_LB))
        finally:
            first.close()


def test_fanout_arg_packs_group_and_mode():
    assert fanout_arg(0x1234, FANOUT_DEFAULT_MODE) == 0x1234 | (0x8000 << 16)
    with pytest.raises(ValueError, match="65536"):
        fanout_arg(65536)
    with pytest.raises(ValueError, match="mode"):
        fanout_arg(1, 0x10000)


def test_the_group_ids_in_use_are_listed_and_a_busy_id_is_passed_over(lab):
    """Another program's fanout group (here: a capture joined with the very
    mode --workers uses, as an IDS with flow hashing would) is seen through
    sock_diag in its network namespace, and the supervisor's choice skips it."""
    prog = bpf.compile_filter("tcp")
    busy = os.getpid() & 0xFFFF  # the id a supervisor in this process would prefer
    with lab.inside("online"):
        before = fanoutids.ids_in_use()
        assert busy not in before
        other = open_packet_capture(["eth0"], prog, fanout=(busy, FANOUT_DEFAULT_MODE))
        try:
            assert fanoutids.ids_in_use() == before | {busy}
            group, note = fanoutids.pick_group(busy)
            assert group != busy and group not in before
            assert note == f"group {busy} is another program's"
            assert fanoutids.pick_group(group) == (
                group, f"free; {len(before) + 1} group(s) of other programs in this network namespace")
            sup = Supervisor(2, name="t", log=logging.getLogger("t"), metrics_addr=None,
                             stats_json=None, stats_interval=1.0, gauges=(), help_text=None,
                             merge_rules=None, ready_timeout=5.0, stop_grace=1.0, finish_ok=True,
                             stop_signals=(), on_reopen=None)
            sup.loop.close()
            assert (sup.fanout_group, sup.fanout_note) == (group, note)
            # the chosen id makes a group of its own: joining it with
            # another mode works, which joining the busy one does not
            mine = open_packet_capture(["eth0"], prog, fanout=(group, PACKET_FANOUT_LB))
            mine.close()
        finally:
            other.close()
        assert fanoutids.ids_in_use() == before
    assert busy not in fanoutids.ids_in_use()  # groups are per network namespace
