"""A restarted tcpcopy does not collide with the sessions its previous process
left open on the target (issue 12): flows picked up mid-stream get client
ports shifted by a salt derived from the process's start time."""

from __future__ import annotations

import pytest

from pycopy_engine.cli import tcpcopy as tcli
from pycopy_engine.core.engine import Engine
from pycopy_engine.core.mapping import PORT_MIN, RESTART_SALT_SPAN, restart_port_salt, wrap_port
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


def test_salt_is_never_zero_and_differs_between_starts():
    assert restart_port_salt(0) == 1
    salts = [restart_port_salt(T0 + s) for s in range(0, RESTART_SALT_SPAN, 7)]
    assert 0 not in salts and len(set(salts)) == len(salts)
    assert restart_port_salt(T0) == restart_port_salt(T0 + 0.5)  # one per second
    assert restart_port_salt(T0) == restart_port_salt(T0 + RESTART_SALT_SPAN)  # 17.9 h period
    # a shifted port never lands back on the port it started from, wrapped or not
    for port in (1, 1023, PORT_MIN, 40000, 0xFFFF):
        for salt in (1, 2, 1000, RESTART_SALT_SPAN - 1, RESTART_SALT_SPAN):
            assert wrap_port(port + salt) != port


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
    assert port == 40000 + restart_port_salt(T0 + 2) and port != 40000
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
