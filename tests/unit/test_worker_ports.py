"""--workers: client ports never collide across workers (core/portpool.py
worker_port/worker_ports, core/mapping.py AddressMapper(worker=...)), and the
offline flow slots (core/flowhash.py) keep each flow in one worker."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pycopy_engine.core.flowhash import flow_slot, own_flows
from pycopy_engine.core.mapping import AddressMapper
from pycopy_engine.core.portpool import worker_port, worker_ports

IP = bytes([10, 1, 2, 3])
TIP = bytes([10, 9, 9, 9])


@given(st.integers(1024, 65535), st.integers(2, 16))
def test_worker_port_is_in_the_class_and_distinct_across_workers(port, count):
    got = [worker_port(port, i, count) for i in range(count)]
    assert len(set(got)) == count
    for i, q in enumerate(got):
        assert 1024 <= q <= 65535 and (q - 1024) % count == i
        assert abs(q - port) < count  # the same block of ports (or the one below at the top)


@given(st.integers(2, 8))
def test_worker_pools_partition_the_pool(count):
    ports = list(range(1024, 9000, 3))
    parts = [set(worker_ports(ports, i, count)) for i in range(count)]
    assert set().union(*parts) == set(ports)
    assert sum(len(p) for p in parts) == len(ports)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.integers(1, 5), st.integers(0, 31), st.integers(0, 2**32),
       st.lists(st.integers(1024, 65535), min_size=1, max_size=40, unique=True))
def test_n_copies_of_flows_in_different_workers_never_share_a_port(count, replicas, shift, seed,
                                                                   sports):
    """-n copies, -f shift, busy ports (linear and random probes): every
    worker's ports stay in its class, so the workers' sets are disjoint."""
    rng = random.Random(seed)
    used: list[set] = []
    for i in range(count):
        m = AddressMapper((), None, shift, random.Random(seed + i), worker=(i, count))
        live: set = set()
        # a third of the ports busy: the probes run too
        busy = {rng.randrange(1024, 65536) for _ in range(20000)}
        for sport in sports:
            for copy in range(replicas):
                key, _ = m.allocate(IP, sport, copy, TIP, 80,
                                    lambda k, live=live, busy=busy: k in live or k[1] in busy)
                assert (key[1] - 1024) % count == i
                live.add(key)
        used.append({k[1] for k in live})
        assert len(live) == len(sports) * replicas
    for i in range(count):
        for j in range(i + 1, count):
            assert not used[i] & used[j]


def test_one_worker_keeps_the_classic_ports():
    m = AddressMapper((), None, 0, random.Random(1))
    assert m.allocate(IP, 40001, 0, TIP, 80, lambda k: False)[0][1] == 40001


def _pkt(src, sport, dst, dport):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes(src), bytes(dst))
    return ip + struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x10, 1000, 0, 0)


@given(st.lists(st.integers(0, 255), min_size=4, max_size=4),
       st.integers(1, 65535), st.integers(1, 65535), st.integers(2, 8))
def test_flow_slot_is_the_same_both_ways(addr, sport, dport, count):
    a = _pkt(addr, sport, [10, 0, 0, 11], dport)
    b = _pkt([10, 0, 0, 11], dport, addr, sport)
    assert flow_slot(a, count) == flow_slot(b, count)
    assert 0 <= flow_slot(memoryview(a), count) < count


def test_flow_slots_spread_flows_and_odd_packets_go_to_slot_0():
    slots = {flow_slot(_pkt([10, 0, 0, 1], p, [10, 0, 0, 11], 80), 2) for p in range(40000, 40040)}
    assert slots == {0, 1}
    assert flow_slot(b"\x60" + bytes(59), 2) == 0  # IPv6
    assert flow_slot(_pkt([1, 1, 1, 1], 1, [2, 2, 2, 2], 2)[:22], 2) == 0  # cut short


@given(st.lists(st.tuples(st.integers(1, 60000), st.integers(1, 3)), max_size=40),
       st.integers(2, 4))
def test_own_flows_keeps_the_files_schedule_and_only_its_slot(flows, count):
    pkts = [(float(t), _pkt([10, 0, 0, c], p, [10, 0, 0, 11], 80))
            for t, (p, c) in enumerate(flows)]
    for index in range(count):
        out = list(own_flows(pkts, index, count))
        mine = [(ts, p) for ts, p in pkts if flow_slot(p, count) == index]
        assert [x for x in out if x[1] is not None] == mine
        if pkts:  # the first and the last timestamps are the file's
            assert out[0][0] == pkts[0][0] and out[-1][0] == pkts[-1][0]
            assert all(p is None for _ts, p in out if (_ts, p) not in mine)
            assert len(out) <= len(mine) + 2
        else:
            assert out == []
