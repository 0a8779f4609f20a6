"""A restarted tcpcopy does not collide with the sessions its previous process
left open on the target (issue 12): flows picked up mid-stream get client
ports shifted by a salt derived from the process's start time."""

from __future__ import annotations

import pytest

from pycopy_engine.cli import tcpcopy as tcli
from pycopy_engine.core.engine import Engine
from pycopy_engine.core.mapping import (
    PORT_MIN,
    RAND_SPAN,
    RESTART_SALT_SPAN,
    AddressMapper,
    restart_port_salt,
    wrap_port,
)
from pycopy_engine.wire.tcpip import SYN, parse_ipv4_tcp

from .simtcp import SimClient, SimServer, Wire

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])
TARGET = bytes([10, 1, 0, 12])
T0 = 1_796_000_000.25  # a start time (Unix seconds)


def started_at(monkeypatch, when: float, *opts: str) -> Engine:
    """An engine configured the way the tcpcopy command configures it, started at ``when``."""
    monkeypatch.setattr(tcli.time, "time", lambda: when)
    args = tcli.parse_args(["-x", "10.1.0.11:80-10.1.0.12:8080", "-s", "10.1.0.13", *opts])
    return Engine(tcli.make_config(args))


def conversation(port: int = 40000, n: int = 4):
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, port, isn=777)
    cl.connect()
    for i in range(n):
        cl.request(b"GET 100 /r%d" % i)
    return cl, online


def target_ports(wire: Wire) -> set:
    return {parse_ipv4_tcp(p).sport for p in wire.sent}


def test_salt_is_above_every_R_inside_a_band_and_differs_between_starts():
    assert restart_port_salt(0) == RAND_SPAN == 512
    salts = [restart_port_salt(T0 + s) for s in range(RESTART_SALT_SPAN)]
    assert len(set(salts)) == RESTART_SALT_SPAN  # every start second of 25.6 min its own salt
    assert min(salts) == 512 and max(salts) == 2047  # > any R (< 512), < one -f band (2048)
    assert restart_port_salt(T0) == restart_port_salt(T0 + 0.5)  # one per second
    assert restart_port_salt(T0) == restart_port_salt(T0 + RESTART_SALT_SPAN)  # the period


@pytest.mark.parametrize("shift", [0, 1, 31])
def test_mid_stream_offsets_never_meet_syn_ones_nor_another_starts(shift):
    """For every copy: the offset of a mid-stream flow under one start differs
    from the offset under any R (a process that saw the SYN) and under any
    other start salt; copy 0 stays in its -f band."""
    m = AddressMapper(port_shift=shift)
    port = 40000
    for copy in (0, 1, 2, 5):
        syn_ports = set()
        for rand in range(RAND_SPAN):
            m.rand = rand
            m.shift = m.band + rand if shift else 0
            syn_ports.add(m.preferred_port(port, copy))
        mid_ports = [m.preferred_port(port, copy, restart_salt=restart_port_salt(T0 + s))
                     for s in range(RESTART_SALT_SPAN)]
        assert len(set(mid_ports)) == RESTART_SALT_SPAN, copy
        assert not syn_ports & set(mid_ports), copy
        if copy == 0:
            # (ports wrap into 1024..65535 as in C: offsets count modulo 64512)
            assert all((p - port - (shift << 11)) % (0x10000 - PORT_MIN) < 2048 for p in mid_ports)
    for p in (1, 1023, PORT_MIN, 0xFFFF):  # wrapped: never back on the original port
        assert all(wrap_port(p + salt) != p for salt in range(512, 2048))


def test_restarted_process_picks_up_the_flow_on_another_port(monkeypatch):
    """Process 1 replays a connection from its SYN and is killed mid-way (the
    target keeps that connection); process 2, started 2 s later, picks the same
    flow up mid-stream on another client port and leaves the old one alone."""
    cl, online = conversation()
    target = SimServer(TARGET, 8080, seed=99)
    first = Wire(started_at(monkeypatch, T0, "-L"), target)
    for pkt in cl.captured[:5]:  # SYN, ACK, request 0 + its ACK, request 1
        first.capture(pkt, 0.001)
    first.advance(0.1)
    assert target_ports(first) == {40000}  # SYN captured: the client's own port (as in C)
    stale = target.conns[(CLIENT, 40000)]
    assert stale.requests == 2 and not stale.fin_rcvd
    # killed: nothing more from process 1; the target still holds (CLIENT, 40000)

    second = Wire(started_at(monkeypatch, T0 + 2, "-L"), target)
    for pkt in cl.captured[5:]:  # request 1's ACK, requests 2 and 3 with their ACKs
        second.capture(pkt, 0.001)
    second.advance(0.1)
    (port,) = target_ports(second)
    assert port == 40000 + restart_port_salt(T0 + 2)
    assert second.engine.stats.c["sessions_fake_syn"] == 1
    assert target.conns[(CLIENT, 40000)] is stale and stale.requests == 2  # untouched
    assert [line for peer, line in target.log if peer == (CLIENT, port)] == [b"GET 100 /r2",
                                                                             b"GET 100 /r3"]
    assert not any(parse_ipv4_tcp(p).flags & SYN and parse_ipv4_tcp(p).sport == 40000
                   for p in second.sent)


@pytest.mark.parametrize("opts", [(), ("-n", "3"), ("-f", "2"), ("-n", "3", "-f", "2")])
def test_two_processes_map_a_mid_stream_flow_to_different_ports(monkeypatch, opts):
    """Both processes pick the flow up mid-stream (a crash loop): every copy
    lands on another port than the same copy of the previous process."""
    cl, _ = conversation()
    ports = []
    for start in (T0, T0 + 5):
        target = SimServer(TARGET, 8080, seed=99)
        wire = Wire(started_at(monkeypatch, start, *opts), target)
        for pkt in cl.captured[4:]:
            wire.capture(pkt, 0.001)
        wire.advance(0.1)
        sessions = {}
        for p in wire.sent:
            seg = parse_ipv4_tcp(p)
            if seg.flags & SYN:
                sessions.setdefault(seg.sport, seg)
        copies = int(opts[opts.index("-n") + 1]) if "-n" in opts else 1
        assert len(sessions) == copies
        assert len(target.log) == 3 * copies  # requests 1 to 3, every copy
        ports.append(sessions)
    # same copy in both processes: the copies' order of SYNs is the copy order
    for before, after in zip(ports[0], ports[1]):
        assert before != after, (opts, ports)
    assert not set(ports[0]) & set(ports[1])


def test_syn_captured_flows_keep_their_ports(monkeypatch):
    """-n/-f semantics are unchanged for connections whose SYN was captured."""
    cl, _ = conversation()
    for opts, expect in (((), {40000}), (("-n", "2"), None)):
        eng = started_at(monkeypatch, T0 + 3, *opts)
        wire = Wire(eng, SimServer(TARGET, 8080, seed=99))
        for pkt in cl.captured:
            wire.capture(pkt, 0.001)
        got = target_ports(wire)
        if expect is None:
            expect = {40000, 40000 + 32 + eng.mapper.rand}
        assert got == expect
