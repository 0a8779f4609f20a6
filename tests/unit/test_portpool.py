"""Own-address mode's client-port pool (core/portpool.py), with a fake clock."""

from __future__ import annotations

from pycopy_engine.core.engine import Engine, EngineConfig
from pycopy_engine.core.mapping import TargetMap
from pycopy_engine.core.portpool import PortPool, pool_ports, port_intervals, start_offset
from pycopy_engine.wire.tcpip import parse_ipv4_tcp

from .simtcp import SimClient, SimServer, Wire

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])
TARGET = bytes([10, 1, 0, 12])


def test_pool_ports_avoid_the_local_range_listening_ports_and_low_ports():
    ports = pool_ports((32768, 60999), [80, 8080, 22, 61005])
    s = set(ports)
    assert min(ports) == 1024 and max(ports) == 65535
    assert not s & set(range(32768, 61000))
    assert 8080 not in s and 61005 not in s and 80 not in s
    assert len(ports) == (32768 - 1024) + (65536 - 61000) - 2  # 8080 and 61005 removed


def test_port_intervals_split_around_excluded_ports():
    assert port_intervals(pool_ports((2000, 60000), [1500])) == [
        (1024, 1499), (1501, 1999), (60001, 65535)]


def test_least_recently_released_first_and_60s_rest():
    pool = PortPool([ONLINE], [5000, 5001, 5002])
    a, b, c = pool.acquire(0.0), pool.acquire(0.0), pool.acquire(0.0)
    assert (a, b, c) == ((ONLINE, 5000), (ONLINE, 5001), (ONLINE, 5002))
    assert pool.acquire(1.0) is None and pool.exhausted == 1
    pool.release((ONLINE, 5001), 10.0)
    pool.release((ONLINE, 5000), 20.0)
    assert pool.acquire(69.9) is None  # 5001 rests until 70.0
    assert pool.acquire(70.0) == (ONLINE, 5001)  # released first, handed out first
    assert pool.acquire(70.0) is None
    assert pool.acquire(80.0) == (ONLINE, 5000)
    assert pool.exhausted == 3
    pool.release((ONLINE, 4242), 80.0)  # never held: ignored
    assert pool.free_count == 0 and pool.held_count == 3


def test_a_busy_port_is_skipped_and_rests():
    pool = PortPool([ONLINE], [6000, 6001])
    taken = {6000}
    assert pool.acquire(0.0, taken.__contains__) == (ONLINE, 6001)
    assert pool.busy_skipped == 1
    taken.clear()
    assert pool.acquire(1.0, taken.__contains__) is None  # 6000 rests after being seen busy
    assert pool.acquire(60.0, taken.__contains__) == (ONLINE, 6000)


def test_several_own_addresses_each_port_once_per_address_in_turn():
    other = bytes([10, 1, 0, 21])
    pool = PortPool([ONLINE, other], [7000, 7001])
    got = [pool.acquire(0.0) for _ in range(4)]
    assert got == [(ONLINE, 7000), (other, 7000), (ONLINE, 7001), (other, 7001)]
    assert pool.size == 4 and pool.acquire(0.0) is None


def _engine(ports, replicas=1):
    cfg = EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 8080)], clt_ips=[ONLINE],
                       replicas=replicas, seed=7)
    eng = Engine(cfg)
    pool = PortPool([ONLINE], ports)
    eng.use_port_pool(pool)
    target = SimServer(TARGET, 8080, seed=99)
    return eng, pool, target, Wire(eng, target)


def _session(wire, port, isn):
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, port, isn=isn)
    cl.connect()
    cl.request(b"GET 100 /r")
    cl.close()
    for pkt in cl.captured:
        wire.capture(pkt, 0.001)
    wire.advance(0.1)


def test_engine_takes_client_ports_from_the_pool_and_the_own_address():
    eng, pool, target, wire = _engine([7000, 7001, 7002, 7003], replicas=2)
    _session(wire, 40000, 111)
    seen = {(parse_ipv4_tcp(p).src, parse_ipv4_tcp(p).sport) for p in wire.sent}
    assert seen == {(ONLINE, 7000), (ONLINE, 7001)}  # -n 2: two pool ports, own address
    assert eng.stats.c["requests_sent"] == 2 and not eng.sessions
    assert pool.held_count == 0 and pool.free_count == 4  # both released at the end
    _session(wire, 40001, 222)  # the next session gets the never-used ports, not 7000/7001
    seen2 = {parse_ipv4_tcp(p).sport for p in wire.sent} - {7000, 7001}
    assert seen2 == {7002, 7003}


def test_pool_exhaustion_is_counted_not_a_crash():
    eng, pool, target, wire = _engine([7000])
    online = SimServer(ONLINE, 80, seed=5)
    first = SimClient(online, CLIENT, 40000, isn=1)
    first.connect()  # stays open: holds the only port
    for pkt in first.captured:
        wire.capture(pkt, 0.001)
    _session(wire, 40001, 2)
    c = eng.stats.c
    assert c["port_pool_exhausted"] == 1
    assert c["requests_sent"] == 0 and len(eng.sessions) == 1
    assert {parse_ipv4_tcp(p).sport for p in wire.sent} == {7000}


def test_a_restart_starts_past_the_ports_the_previous_process_used():
    """Two processes 10 s apart, the first at the pool's sustained rate (size / 60 s
    per second): the second starts just past the first one's ports, so none of
    them comes back before the 60 s the target's TIME_WAIT needs."""
    ports = list(range(20000, 20600))  # 600 slots: 10 new sessions/s sustained
    first = PortPool([ONLINE], ports, epoch=1_000_000.0)
    used = []
    for i in range(100):  # 10 s at 10/s
        slot = first.acquire(i / 10)
        assert slot is not None
        used.append(slot)
    second = PortPool([ONLINE], ports, epoch=1_000_010.0)
    nxt = [second.acquire(0.0) for _ in range(500)]  # the 50 s of traffic after the restart
    assert not set(used) & set(nxt)
    assert start_offset(1_000_000.0, 600) != start_offset(1_000_000.5, 600)  # a restart in 0.5 s
    assert PortPool([ONLINE], ports).acquire(0.0) == (ONLINE, 20000)  # no epoch: in order
