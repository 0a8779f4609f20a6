"""``--tee`` (core/tee.py): every captured session copied to every matching target,
each copy its own session with its own client port; without --tee the first
matching map wins, exactly as before."""

from __future__ import annotations

import random
from typing import Dict, List, Set, Tuple

import pytest

from pycopy_engine.cli import tcpcopy as tcli
from pycopy_engine.core.brake import BrakeConfig, EngineBrake
from pycopy_engine.core.engine import Engine, EngineConfig
from pycopy_engine.core.health import Health
from pycopy_engine.core.mapping import AddressMapper, TargetMap, find_map, find_maps
from pycopy_engine.core.portpool import PortPool
from pycopy_engine.wire.tcpip import SYN, parse_ipv4_tcp

from .simtcp import SimClient, SimServer, Wire

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])
TA = bytes([10, 1, 0, 12])
TB = bytes([10, 1, 0, 14])
A, B = (TA, 8080), (TB, 80)
MAPS = [TargetMap(None, 80, TA, 8080), TargetMap(ONLINE, 80, TB, 80)]


class Targets:
    """Several SimServers behind one Wire: packets go to the one they are addressed to."""

    def __init__(self, *servers: SimServer) -> None:
        self.by_addr = {(s.ip, s.port): s for s in servers}
        self.dead: Set[Tuple[bytes, int]] = set()  # packets to these vanish (a black hole)
        self.got: Dict[Tuple[bytes, int], List[bytes]] = {k: [] for k in self.by_addr}

    def receive(self, pkt: bytes) -> None:
        seg = parse_ipv4_tcp(pkt)
        addr = (seg.dst, seg.dport)
        self.got[addr].append(pkt)
        if addr not in self.dead:
            self.by_addr[addr].receive(pkt)

    def take(self) -> List[bytes]:
        out: List[bytes] = []
        for s in self.by_addr.values():
            out += s.take()
        return out

    def log(self, addr: Tuple[bytes, int]) -> List[Tuple[Tuple[bytes, int], bytes]]:
        return self.by_addr[addr].log


def make(tee: bool = True, maps=None, brake: bool = False, health: bool = False,
         **kw) -> Tuple[Engine, Targets, Wire]:
    cfg = EngineConfig(maps=maps or MAPS, seed=7, tee=tee, **kw)
    eng = Engine(cfg)
    if health:
        eng.health = Health(eng, 10)
    if brake or health:
        eng.brake = EngineBrake(eng, BrakeConfig())
    targets = Targets(SimServer(TA, 8080, seed=99), SimServer(TB, 80, seed=98))
    return eng, targets, Wire(eng, targets)


def session(port: int, n: int = 2, close: bool = True) -> List[bytes]:
    """One client connection to online:80 whose requests name its port."""
    online = SimServer(ONLINE, 80, seed=port)
    cl = SimClient(online, CLIENT, port, isn=port * 977)
    cl.connect()
    for i in range(n):
        cl.request(b"GET 200 /c%d/r%d" % (port, i))
    if close:
        cl.close()
    return cl.captured


def lines(targets: Targets, addr) -> List[bytes]:
    return sorted(line for _peer, line in targets.log(addr))


def syn_ports(targets: Targets, addr) -> List[int]:
    return [parse_ipv4_tcp(p).sport for p in targets.got[addr] if parse_ipv4_tcp(p).flags & SYN]


# ---------------------------------------------------------------- mapping


def test_find_maps_every_match_in_order_one_per_target():
    maps = [TargetMap(None, 80, TA, 8080), TargetMap(ONLINE, 81, TB, 80),
            TargetMap(ONLINE, 80, TB, 80), TargetMap(bytes([10, 9, 9, 9]), 80, TA, 1),
            TargetMap(None, 80, TA, 8080)]
    assert find_maps(maps, ONLINE, 80) == [maps[0], maps[2]]  # the duplicate A once
    assert find_maps(maps, bytes([10, 9, 9, 9]), 80) == [maps[0], maps[3]]
    assert find_maps(maps, ONLINE, 82) == []
    assert find_map(maps, ONLINE, 80) is maps[0]  # without --tee: the first one only


def test_allocate_ip_copy_picks_the_address_apart_from_the_port():
    m = AddressMapper([bytes([10, 2, 0, i]) for i in (1, 2, 3)], None, 0, random.Random(1))
    plain, _ = m.allocate(CLIENT, 40000, 2, TA, 80, lambda k: False)
    teed, _ = m.allocate(CLIENT, 40000, 2, TB, 80, lambda k: False, ip_copy=0)
    first, _ = m.allocate(CLIENT, 40000, 0, TA, 80, lambda k: False)
    assert plain[1] == teed[1] != first[1]  # the port follows the copy number
    assert teed[0] == first[0] != plain[0]  # the address follows ip_copy


# ---------------------------------------------------------------- fan-out


def test_every_session_reaches_every_target_as_its_own_session():
    eng, targets, wire = make()
    sent = []
    for port in range(40000, 40020):
        cap = session(port, 3)
        sent += [b"GET 200 /c%d/r%d" % (port, i) for i in range(3)]
        for p in cap:
            wire.capture(p, 0.001)
    wire.advance(0.5)
    assert lines(targets, A) == sorted(sent)
    assert lines(targets, B) == sorted(sent)
    c = eng.stats.c
    assert c["sessions_opened"] == 40 and c["sessions_closed"] == 40
    assert not eng.sessions and not eng.flows
    # every copy its own client port: 40 distinct (ip, port) over both targets
    peers = {peer for peer, _l in targets.log(A)} | {peer for peer, _l in targets.log(B)}
    assert len(peers) == 40


def test_without_tee_the_first_matching_map_wins_unchanged():
    eng, targets, wire = make(tee=False)
    solo = Engine(EngineConfig(maps=MAPS[:1], seed=7))  # the same engine with only map A
    solo_t = Targets(SimServer(TA, 8080, seed=99), SimServer(TB, 80, seed=98))
    solo_w = Wire(solo, solo_t)
    for port in (40000, 40001, 40002):
        for p in session(port):
            wire.capture(p, 0.001)
            solo_w.capture(p, 0.001)
    assert targets.got[B] == [] and lines(targets, B) == []
    assert len(lines(targets, A)) == 6
    assert targets.got[A] == solo_t.got[A]  # byte for byte what a single map sends
    assert eng.tee is None


def test_copies_of_a_session_never_share_a_client_port_n_and_c_per_target():
    clt = [bytes([10, 1, 5, i]) for i in (1, 2, 3)]
    eng, targets, wire = make(replicas=2, clt_ips=clt)
    for port in range(40000, 40010):
        for p in session(port, 1, close=False):
            wire.capture(p, 0.001)
    assert len(eng.sessions) == 10 * 2 * 2
    for ss in eng.flows.values():
        assert len(ss) == 4
        assert len({(s.cip, s.cport) for s in ss}) == 4  # four copies, four client ports
        for t in (A, B):
            assert len([s for s in ss if (s.tip, s.tport) == t]) == 2  # -n 2 per target
        # -c per target: the -n copy i has the same address at every target
        by_target = {t: [s.cip for s in sorted(ss, key=lambda s: s.copy) if (s.tip, s.tport) == t]
                     for t in (A, B)}
        assert by_target[A] == by_target[B] and len(set(by_target[A])) == 2
    # no client ip:port is used towards two targets by any live sessions
    used = [(k[0], k[1]) for k in eng.sessions]
    assert len(used) == len(set(used))
    assert {k[0] for k in eng.sessions} <= set(clt)


@pytest.mark.parametrize("tee,replicas", [(True, 1), (True, 2), (False, 3)])
def test_every_copy_closes_when_the_targets_closed_first(tee, replicas):
    """The client's FIN ends a copy whose target already closed; the copy after it in
    the flow's list must still get that FIN (it was skipped once: the list shrank
    under the loop, and the copy stayed ESTABLISHED until the -t timeout)."""
    eng = Engine(EngineConfig(maps=MAPS if tee else MAPS[:1], seed=7, tee=tee,
                              replicas=replicas))
    targets = Targets(SimServer(TA, 8080, seed=99, close_after=1),
                      SimServer(TB, 80, seed=98, close_after=1))
    wire = Wire(eng, targets)
    for port in (40000, 40001):
        for p in session(port, 1):
            wire.capture(p, 0.01)
    n = 2 * replicas * (2 if tee else 1)
    c = eng.stats.c
    assert c["resp_fin"] == c["send_fin"] == c["sessions_closed"] == n
    assert not eng.sessions and not eng.flows


def test_copy_ports_of_the_first_target_are_those_of_plain_n():
    """Target j's -n copies take copy numbers j*n.., so target A's are plain -n's."""
    eng, targets, wire = make(replicas=2)
    plain = Engine(EngineConfig(maps=MAPS[:1], seed=7, replicas=2))
    plain_t = Targets(SimServer(TA, 8080, seed=99), SimServer(TB, 80, seed=98))
    plain_w = Wire(plain, plain_t)
    for p in session(40000, 1, close=False)[:1]:
        wire.capture(p)
        plain_w.capture(p)
    assert sorted(syn_ports(targets, A)) == sorted(syn_ports(plain_t, A))
    r = eng.mapper.rand
    assert sorted(syn_ports(targets, B)) == [40000 + 3 * 32 + r, 40000 + 5 * 32 + r]


def test_a_port_taken_towards_another_target_is_not_reused():
    eng, targets, wire = make(replicas=1)
    r = eng.mapper.rand
    # flow X: A gets 40000, B gets 40000+32+R; flow Y's own port is that one, so its copy
    # to A would take a client ip:port a live session to B already uses
    x = session(40000, 1, close=False)
    y = session(40000 + 32 + r, 1, close=False)
    wire.capture(x[0])
    wire.capture(y[0])
    used = [(k[0], k[1]) for k in eng.sessions]
    assert len(used) == 4 and len(set(used)) == 4
    assert eng.stats.c["port_collision_avoided"] >= 1


def test_sampling_selects_the_same_sessions_for_every_target():
    eng, targets, wire = make(sample_percent=50)
    for port in range(20000, 20200):
        for p in session(port, 1):
            wire.capture(p, 0.0)
    wire.advance(0.5)
    a, b = lines(targets, A), lines(targets, B)
    assert a == b
    assert 70 <= len(a) <= 130
    assert eng.stats.c["sessions_opened"] == 2 * len(a)


def test_own_address_pool_gives_every_copy_its_own_port():
    eng, targets, wire = make(replicas=2)
    pool = PortPool([ONLINE], range(20000, 20100))
    eng.use_port_pool(pool)
    for port in (40000, 40001, 40002):
        for p in session(port, 1, close=False):
            wire.capture(p, 0.001)
    keys = list(eng.sessions)
    assert len(keys) == 12 and {k[0] for k in keys} == {ONLINE}
    assert len({k[1] for k in keys}) == 12 and pool.held_count == 12
    assert len(lines(targets, A)) == len(lines(targets, B)) == 6


# ---------------------------------------------------------------- a dead target


def test_a_dead_target_holds_back_neither_capture_nor_the_other_target():
    eng, targets, wire = make(health=True)
    targets.dead.add(B)  # B swallows everything: no SYN-ACK, ever
    sent = []
    for k, port in enumerate(range(40000, 40030)):
        cap = session(port, 2)
        sent += [b"GET 200 /c%d/r%d" % (port, i) for i in range(2)]
        for p in cap:
            wire.capture(p, 0.01)
        # each request reached A as soon as it was captured: nothing waits for B
        assert len(lines(targets, A)) == 2 * (k + 1)
    wire.advance(10)
    assert lines(targets, A) == sorted(sent) and lines(targets, B) == []
    c = eng.stats.c
    name_b = "10.1.0.14:80"
    assert c["brake_trips:target=" + name_b] == 1  # B alone is braked ...
    assert eng.brake is not None and not eng.brake.brake.engaged(A)  # ... not A
    assert c["drop:brake"] >= 1
    h = eng.health
    assert h is not None
    cap_a, done_a, _f, ratio_a = h.figures(A, wire.now - 5)
    cap_b, done_b, failed_b, ratio_b = h.figures(B, wire.now - 5)
    assert cap_a == done_a == 60 and ratio_a == 1.0
    assert cap_b == 60 and done_b == 0 and ratio_b == 0.0 and failed_b >= 5
    assert c["requests_captured:target=10.1.0.12:8080"] == 60
    assert c["requests_captured:target=" + name_b] == 60


def test_a_braked_target_is_refused_alone():
    eng, targets, wire = make(brake=True)
    assert eng.brake is not None
    eng.brake.brake._engage(B, eng.brake.brake.state(B), 0.0)
    for p in session(40000, 1):
        wire.capture(p, 0.001)
    assert len(lines(targets, A)) == 1 and targets.got[B] == []
    assert eng.stats.c["drop:brake"] == 1 and eng.stats.c["sessions_opened"] == 1


# ---------------------------------------------------------------- options


def test_tee_option_reaches_the_engine():
    a = tcli.parse_args(["-x", "80-10.0.0.12:80,80-10.0.0.14:8080", "-s", "10.0.0.13", "--tee",
                         "-n", "2"])
    cfg = tcli.make_config(a)
    assert cfg.tee and cfg.replicas == 2
    assert not tcli.make_config(tcli.parse_args(["-x", "80-10.0.0.12:80,80-10.0.0.14:8080", "-s",
                                                 "10.0.0.13"])).tee


@pytest.mark.parametrize("xmap,extra,needle", [
    ("80-10.0.0.12:80", [], "maps no online address to two targets"),
    ("80-10.0.0.12:80,81-10.0.0.14:80", [], "maps no online address to two targets"),
    ("80-10.0.0.12:80,10.0.0.11:80-10.0.0.12:80", [], "10.0.0.12:80 is mapped twice"),
    ("80-10.0.0.12:80,80-10.0.0.14:80", ["-n", "512"], "option -n: invalid value 512"),
])
def test_tee_refused_where_it_makes_no_sense(capsys, xmap, extra, needle):
    with pytest.raises(SystemExit) as ei:
        tcli.parse_args(["-x", xmap, "-s", "10.0.0.13", "--tee", *extra])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and ("--tee" in err)


def test_tee_accepts_maps_that_overlap_only_through_a_wildcard():
    # 10.0.0.11:80 and 10.0.0.21:80 each reach the wildcard target and their own one
    a = tcli.parse_args(["-x", "80-10.0.0.12:80,10.0.0.11:80-10.0.0.14:80,"
                         "10.0.0.21:80-10.0.0.14:80", "-s", "10.0.0.13", "--tee"])
    assert a.tee and len(a.maps) == 3

