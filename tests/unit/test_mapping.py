"""-x maps, -c/-H rewriting, -f/-n port allocation, -r/-g sampling."""

from __future__ import annotations

import random

import pytest

from pycopy_engine.core.mapping import (
    AddressMapper,
    Sampler,
    TargetMap,
    expand_clt_ips,
    find_map,
    parse_ip,
    wrap_port,
)

IP = parse_ip


def test_first_matching_map_wins_and_any_ip():
    maps = [TargetMap(IP("10.0.0.11"), 80, IP("10.0.0.12"), 8080),
            TargetMap(None, 80, IP("10.0.0.99"), 80),
            TargetMap(None, 443, IP("10.0.0.12"), 8443)]
    assert find_map(maps, IP("10.0.0.11"), 80) is maps[0]
    assert find_map(maps, IP("10.0.0.50"), 80) is maps[1]
    assert find_map(maps, IP("10.0.0.11"), 443) is maps[2]
    assert find_map(maps, IP("10.0.0.11"), 22) is None


def test_expand_client_range_skips_targets():
    ips = expand_clt_ips("10.1.2.x,10.9.9.9", [IP("10.1.2.7")])
    assert len(ips) == 254 - 1 + 1
    assert IP("10.1.2.7") not in ips and IP("10.1.2.1") in ips and IP("10.1.2.254") in ips
    with pytest.raises(ValueError):
        expand_clt_ips("10.1.2.x," + ",".join("10.3.%d.x" % i for i in range(20)))


def test_client_ip_sticky_round_robin_and_localhost():
    m = AddressMapper([IP("10.5.0.1"), IP("10.5.0.2")], localhost_ip=IP("10.0.0.10"))
    a, b, c = IP("1.1.1.1"), IP("2.2.2.2"), IP("3.3.3.3")
    assert [m.client_ip(x) for x in (a, b, c, a, b)] == [IP("10.5.0.1"), IP("10.5.0.2"),
                                                         IP("10.5.0.1"), IP("10.5.0.1"),
                                                         IP("10.5.0.2")]
    assert m.client_ip(a, copy=1) == IP("10.5.0.2")
    assert AddressMapper(localhost_ip=IP("10.0.0.10")).client_ip(IP("127.0.0.1")) == IP("10.0.0.10")


def test_port_shift_and_wrap():
    m = AddressMapper(port_shift=3, rng=random.Random(1))
    assert m.shift == (3 << 11) + m.rand
    assert m.preferred_port(1000, 0) == 1000 + m.shift
    assert 1024 <= wrap_port(65535 + 10) < 65536 and wrap_port(80) == 80


def test_allocator_never_returns_a_live_tuple():
    m = AddressMapper(rng=random.Random(2))
    live = set()
    t = IP("10.0.0.12")
    for copy in range(50):
        key, _skipped = m.allocate(IP("10.0.0.10"), 40000, copy, t, 80, live.__contains__)
        assert key not in live
        live.add(key)
    # the original port is taken by somebody else: the next free one is used, and counted
    live = {(IP("10.0.0.10"), 40000, t, 80), (IP("10.0.0.10"), 40001, t, 80)}
    key, skipped = m.allocate(IP("10.0.0.10"), 40000, 0, t, 80, live.__contains__)
    assert key == (IP("10.0.0.10"), 40002, t, 80) and skipped == 2


def test_sampler_is_deterministic_per_session_and_near_the_percentage():
    s = Sampler(30)
    keep = [s.keep(IP("10.0.0.10"), p, 0.0) for p in range(20000, 30000)]
    assert keep == [s.keep(IP("10.0.0.10"), p, 5.0) for p in range(20000, 30000)]
    assert 0.27 < sum(keep) / len(keep) < 0.33
    assert all(Sampler(100).keep(IP("1.2.3.4"), p, 0) for p in range(100))
    assert all(Sampler(0).keep(IP("1.2.3.4"), p, 0) for p in range(100))  # 0 means all, as C


def test_gradual_ramp():
    s = Sampler(100, gradual=True)
    first = sum(s.keep(IP("10.0.0.10"), p, 0.0) for p in range(5000))
    later = sum(s.keep(IP("10.0.0.10"), p, 49.5) for p in range(5000))
    final = sum(s.keep(IP("10.0.0.10"), p, 200.0) for p in range(5000))
    assert first < 150 and 2200 < later < 2800 and final == 5000


def test_allocating_in_a_block_of_busy_ports_is_not_quadratic():
    """-n 3 over 20,000 sequential client ports (one NAT'd client, a SYN flood):
    the copies' preferred ports fall inside the block already taken.  A linear
    walk to the next free port costs ~50 million probes here; the allocator
    must find each free port in a few probes on average, and never a live one."""
    m = AddressMapper(rng=random.Random(4))
    live: set = set()
    probes = 0

    def in_use(key) -> bool:
        nonlocal probes
        probes += 1
        if probes > 60000 * 20:
            raise AssertionError("more than 20 probes per allocation on average")
        return key in live

    t, c = IP("10.0.0.12"), IP("10.0.0.10")
    for port in range(1024, 21024):
        for copy in range(3):
            key, _ = m.allocate(c, port, copy, t, 80, in_use)
            assert key not in live
            live.add(key)
    assert len(live) == 60000
    assert probes < 60000 * 20, probes


def test_client_slot_map_is_bounded_and_stays_sticky():
    from pycopy_engine.core import mapping

    m = AddressMapper([IP("10.5.0.1"), IP("10.5.0.2"), IP("10.5.0.3")])
    sources = [bytes([11, i >> 16 & 255, i >> 8 & 255, i & 255]) for i in range(40000)]
    first = [m.client_ip(x) for x in sources]
    assert len(m._ip_slot) == mapping.MAX_IP_SLOTS  # a spoofed flood cannot grow it further
    assert [m.client_ip(x) for x in sources] == first  # every source keeps its address
    assert {first.count(ip) for ip in set(first)} <= set(range(12000, 15000))  # all used
