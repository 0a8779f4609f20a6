"""-m (core/memory.py) and port exhaustion: which sessions are evicted, that an
evicted session stays dead, that the guard acts on measured RSS, and that a
client address out of ports is counted and skipped."""

from __future__ import annotations

import random

import pytest

from pycopy_engine.core.engine import Engine, EngineConfig
from pycopy_engine.core.mapping import AddressMapper, PortExhausted, TargetMap, parse_ip
from pycopy_engine.io.metrics import render_prometheus
from pycopy_engine.wire.tcpip import SYN, parse_ipv4_tcp

from .simtcp import SimClient, SimServer, Wire

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])
TARGET = bytes([10, 1, 0, 12])
MB = 1 << 20


def make(**kw):
    cfg = EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 8080)], seed=7, **kw)
    eng = Engine(cfg)
    target = SimServer(TARGET, 8080, seed=99)
    return eng, target, Wire(eng, target)


def client(port: int, isn: int = 1000) -> SimClient:
    cl = SimClient(SimServer(ONLINE, 80, seed=5), CLIENT, port, isn=isn)
    cl.connect()
    return cl


def keys_of(eng, ports):
    return {k for k in eng.sessions if k[1] in ports}


def populate(eng, wire):
    """Idle keep-alive sessions (t=0), active ones (t=0, and again at t=20), then a
    SYN flood at t=20.  Returns the three groups' client ports and their clients."""
    clients = {}
    idle, active, flood = range(41000, 41004), range(42000, 42006), range(43000, 43030)
    for port in (*idle, *active):  # active ones are older than the flood and as old as idle
        cl = clients[port] = client(port, isn=port * 7)
        cl.request(b"GET 100 /first")
        for pkt in cl.captured:
            wire.capture(pkt)
    wire.advance(20.0)
    for port in active:
        cl = clients[port]
        n = len(cl.captured)
        cl.request(b"GET 100 /again")
        for pkt in cl.captured[n:]:
            wire.capture(pkt)
    for port in flood:  # one SYN each; the target answers, the client never speaks again
        cl = clients[port] = client(port, isn=port * 11)
        wire.capture(cl.captured[0])
    assert len(eng.sessions) == len(idle) + len(active) + len(flood)
    return set(idle), set(active), set(flood), clients


def test_syn_only_then_idle_then_active_are_evicted_in_that_order():
    eng, target, wire = make(mem_limit=100 * MB)
    idle, active, flood, _ = populate(eng, wire)
    now = wire.now
    assert eng.memory.evict(eng.sessions, 25, now) == 25
    assert keys_of(eng, flood) and len(keys_of(eng, flood)) == 5  # only flood tuples went
    assert len(keys_of(eng, idle)) == 4 and len(keys_of(eng, active)) == 6
    eng.memory.evict(eng.sessions, 7, now)
    assert not keys_of(eng, flood)  # the rest of the flood, then the idle sessions
    assert len(keys_of(eng, idle)) == 2 and len(keys_of(eng, active)) == 6
    eng.memory.evict(eng.sessions, 4, now)
    assert not keys_of(eng, idle) and len(keys_of(eng, active)) == 4
    c = eng.stats.c
    assert c["evicted_group:syn_only"] == 30 and c["evicted_group:idle"] == 4
    assert c["evicted_group:active"] == 2 and c["evicted:memory_limit"] == 36
    assert c["rst_sent:memory_limit"] == 36  # the target's side is reset, not left open
    wire.settle()
    assert target.rst_rcvd == 36


def test_measured_rss_drives_the_cap():
    eng, target, wire = make(mem_limit=100 * MB)
    idle, active, flood, _ = populate(eng, wire)
    mem = eng.memory
    assert eng.observe_rss(50 * MB, wire.now) == 0 and mem.cap is None  # far below: nothing
    n = len(eng.sessions)  # 40
    evicted = eng.observe_rss(90 * MB, wire.now)  # above the high mark (85 %)
    assert evicted == n - int(n * 0.8) and mem.cap == 32
    assert len(eng.sessions) == 32
    assert len(keys_of(eng, active)) == 6 and len(keys_of(eng, idle)) == 4
    # the RSS does not fall after freeing (the allocator keeps it): no new eviction
    assert eng.observe_rss(90 * MB, wire.now + 0.25) == 0 and len(eng.sessions) == 32
    # a flood at the cap: each new session makes room first, the cap holds
    for port in range(44000, 44100):
        wire.capture(client(port).captured[0])
        assert len(eng.sessions) <= 32
    assert len(keys_of(eng, active)) == 6 and len(keys_of(eng, idle)) == 4
    # the RSS grew further: the cap shrinks again
    assert eng.observe_rss(92 * MB, wire.now) > 0 and mem.cap == int(32 * 0.8)
    assert len(keys_of(eng, active)) == 6
    # memory came back: the cap is raised
    cap = mem.cap
    eng.observe_rss(40 * MB, wire.now)
    assert mem.cap is None or mem.cap > cap


def test_measuring_is_due_after_a_batch_of_sessions_not_per_packet():
    eng, target, wire = make()
    assert not eng.memory_due()
    for port in range(45000, 45000 + 127):
        wire.capture(client(port).captured[0])
    assert not eng.memory_due()
    wire.capture(client(46000).captured[0])
    assert eng.memory_due()
    eng.observe_rss(10 * MB, wire.now)
    assert not eng.memory_due()


def test_an_evicted_session_is_not_resurrected():
    eng, target, wire = make(mem_limit=100 * MB)
    cl = client(47000, isn=4242)
    cl.request(b"GET 100 /one")
    for pkt in cl.captured:
        wire.capture(pkt)
    assert len(target.log) == 1
    syns = eng.stats.c["send_syn"]
    eng.memory.evict(eng.sessions, 1, wire.now)
    wire.settle()
    assert not eng.sessions
    n = len(cl.captured)
    cl.request(b"GET 100 /two")
    cl.request(b"GET 100 /three")
    cl.close()
    for pkt in cl.captured[n:]:
        wire.capture(pkt, 1.0)
    c = eng.stats.c
    assert c["drop:evicted"] == len(cl.captured) - n  # every later segment, data or not
    assert c["send_syn"] == syns and c["sessions_fake_syn"] == 0  # no fabricated handshake
    assert not eng.sessions and len(target.log) == 1
    # the retransmitted SYN of the evicted connection is dropped too
    wire.capture(cl.captured[0])
    assert not eng.sessions and c["drop:evicted"] == len(cl.captured) - n + 1
    # a new connection on the same port (another ISN) is a new session
    again = client(47000, isn=999999)
    again.request(b"GET 100 /new")
    for pkt in again.captured:
        wire.capture(pkt)
    assert [line for _p, line in target.log][-1] == b"GET 100 /new"


def test_the_memory_of_evicted_tuples_is_bounded_and_expires():
    eng, target, wire = make()
    eng.memory.tomb_max = 50
    for port in range(48000, 48200):
        wire.capture(client(port).captured[0])
    eng.memory.evict(eng.sessions, 200, wire.now)
    assert len(eng.memory.tombs) == 50  # the oldest tombstones made room
    wire.advance(eng.memory.tomb_ttl + 2.0)  # the once-a-second sweep expires the rest
    assert len(eng.memory.tombs) == 0


# -- port exhaustion ----------------------------------------------------------------------


def test_allocator_raises_port_exhausted_when_every_port_is_live():
    m = AddressMapper(rng=random.Random(3))
    with pytest.raises(PortExhausted):
        m.allocate(CLIENT, 40000, 0, TARGET, 80, lambda key: True)


@pytest.mark.pure_only  # replaces Engine._in_use
def test_port_exhaustion_is_counted_and_the_session_skipped():
    natted = parse_ip("10.5.0.1")
    eng, target, wire = make(clt_ips=[natted], replicas=2)
    full = eng._in_use
    # every port of the single -c address towards the target is held by a live session
    eng._in_use = lambda key: key[0] == natted or full(key)  # type: ignore[method-assign]
    cl = client(49000)
    cl.request(b"GET 100 /x")
    for pkt in cl.captured:
        wire.capture(pkt)  # must not raise
    c = eng.stats.c
    assert c["port_exhausted"] == 2  # both copies of the SYN's session skipped
    assert c["drop:port_exhausted"] == len(cl.captured) - 1  # its later segments, counted
    assert not eng.sessions and not any(parse_ipv4_tcp(p).flags & SYN for p in wire.sent)
    # the counter reaches the statistics outputs
    snap = eng.stats.snapshot()
    assert snap["port_exhausted"] == 2
    assert "pycopy_tcpcopy_port_exhausted_total 2" in render_prometheus("pycopy_tcpcopy", snap)
    # once ports are free again, a new connection is replayed
    eng._in_use = full  # type: ignore[method-assign]
    again = client(49001)
    again.request(b"GET 100 /y")
    for pkt in again.captured:
        wire.capture(pkt)
    assert [line for _p, line in target.log] == [b"GET 100 /y"] * 2


def test_a_copy_evicted_while_its_flow_opens_is_not_left_in_the_flow():
    """-n 2 at a cap of 1: opening the second copy evicts the first; the flow must
    hold only the live copy, and the evicted one must never send again."""
    eng, target, wire = make(replicas=2, mem_limit=100 * MB)
    eng.memory.cap = 1
    cl = client(50000)
    cl.request(b"GET 100 /z")
    wire.capture(cl.captured[0])
    flow = next(iter(eng.flows))
    assert [s.ended for s in eng.flows[flow]] == [False]
    assert eng.stats.c["evicted:memory_limit"] == 1
    for pkt in cl.captured[1:]:
        wire.capture(pkt)
    assert len(target.log) == 1  # the live copy's request, once
