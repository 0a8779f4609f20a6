"""The safety brake (core/brake.py) against the in-memory target with a fake clock.

"The route is gone" is modelled the way it looks to tcpcopy: the target
still answers, but intercept reports nothing (its records are dropped); every
answer dropped that way would have reached a real client.
"""

from __future__ import annotations

import pytest

from pycopy_engine.core.brake import PROBE_PORT_BASE, Brake, BrakeConfig, EngineBrake
from pycopy_engine.core.engine import Engine, EngineConfig
from pycopy_engine.core.health import Health
from pycopy_engine.core.mapping import TargetMap
from pycopy_engine.wire.control import parse_record
from pycopy_engine.wire.tcpip import RST, SYN, parse_ipv4_tcp

from .simtcp import SimClient, SimServer, Wire

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])
TARGET = bytes([10, 1, 0, 12])
T = (TARGET, 8080)


class Route:
    """The target's route via the assistant: when broken, answers go elsewhere."""

    def __init__(self) -> None:
        self.broken = False
        self.leaked = []  # (time, record) answers that went to "real clients"

    def drop(self, wire):
        def drop(rec: bytes) -> bool:
            if self.broken:
                self.leaked.append((wire.now, parse_record(rec)))
            return self.broken
        return drop


def make(enabled=True, **brake_kw):
    cfg = EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 8080)], seed=7)
    eng = Engine(cfg)
    eng.health = Health(eng, 60)
    eng.brake = EngineBrake(eng, BrakeConfig(**brake_kw), enabled=enabled)
    target = SimServer(TARGET, 8080, seed=99)
    wire = Wire(eng, target)
    route = Route()
    wire.drop_records = route.drop(wire)
    return eng, wire, route


def short_session(port: int) -> list:
    online = SimServer(ONLINE, 80, seed=port)
    cl = SimClient(online, CLIENT, port, isn=port * 1000)
    cl.connect()
    cl.request(b"GET 100 /r%d" % port)
    cl.close()
    return cl.captured


def run(wire, eng, start_port, until, gap=0.02, at_each=None):
    """New short sessions every ``gap`` seconds until ``until``; returns the
    (time, sessions_opened after it) of each session start."""
    port = start_port
    opened = []
    while wire.now + gap <= until:
        pkts = short_session(port)
        wire.capture(pkts[0], gap)  # the SYN
        for p in pkts[1:]:
            wire.capture(p, 0.0005)
        opened.append((wire.now, eng.stats.c["sessions_opened"]))
        port += 1
        if at_each:
            at_each()
    return port, opened


def engaged_at(eng):
    ev = [e for e in eng.brake.brake.events]
    return ev


def test_healthy_target_never_brakes():
    eng, wire, route = make()
    run(wire, eng, 20000, 5.0)
    c = eng.stats.c
    assert c["sessions_opened"] > 200 and c["drop:brake"] == 0
    assert not eng.brake.brake.engaged(T)
    assert c["handshakes_failed:target=10.1.0.12:8080"] == 0
    cap, done, failed, ratio = eng.health.figures(T, wire.now)
    assert cap == c["sessions_opened"] and done == cap and ratio == 1.0


def test_route_lost_brakes_within_window_then_resumes_by_itself():
    eng, wire, route = make()
    c = eng.stats.c
    port, _ = run(wire, eng, 20000, 1.0)
    assert not eng.brake.brake.engaged(T)
    route.broken = True
    t_break = wire.now
    opened_at_break = c["sessions_opened"]
    state = {}

    def watch():
        if "engaged" not in state and eng.brake.brake.engaged(T):
            state["engaged"] = wire.now
            state["opened"] = c["sessions_opened"]
    port, _ = run(wire, eng, port, 6.0, at_each=watch)
    assert "engaged" in state, "the brake never engaged"
    t_eng = state["engaged"]
    assert t_eng - t_break <= 3.0  # within the default window
    # after that, not one new session, and the refused ones are counted
    assert c["sessions_opened"] == state["opened"]
    assert c["drop:brake"] > 0
    assert c["brake_trips:target=10.1.0.12:8080"] == 1
    in_window = state["opened"] - opened_at_break
    leaked_sessions = [r for t, r in route.leaked if not PROBE_PORT_BASE <= r.dport < PROBE_PORT_BASE + 1000]
    # at most two answers per session opened before the brake engaged: the SYN-ACK to
    # its SYN and to the one retransmission the judgement waits for; none after that
    assert len(leaked_sessions) <= 2 * in_window, (len(leaked_sessions), in_window)
    assert c["sessions_failed:brake"] > 0
    probes = c["brake_probes:target=10.1.0.12:8080"]
    assert probes >= 2  # probes went on, backing off
    # the route comes back: the brake lets go within probe_max + synack_wait
    route.broken = False
    t_fix = wire.now
    released = {}

    def watch2():
        if "t" not in released and not eng.brake.brake.engaged(T):
            released["t"] = wire.now
            released["opened"] = c["sessions_opened"]
    port, _ = run(wire, eng, port, t_fix + 8.0, at_each=watch2)
    assert "t" in released and released["t"] - t_fix <= 4.0 + 0.5 + 0.03  # probe_max + probe_wait
    assert c["sessions_opened"] > released["opened"] + 100  # new sessions replicate again
    assert c["brake_released:target=10.1.0.12:8080"] == 1
    # and the target's answers to the probe were closed with a RST
    probe_rsts = [parse_ipv4_tcp(p) for p in wire.sent]
    assert any(s.flags == RST and PROBE_PORT_BASE <= s.sport < PROBE_PORT_BASE + 1000
               for s in probe_rsts)
    _cap, _done, failed, _r = eng.health.figures(T, t_eng + 1)
    assert failed >= 5


def test_established_sessions_carry_on_while_braked():
    eng, wire, route = make()
    online = SimServer(ONLINE, 80, seed=1)
    ka = SimClient(online, CLIENT, 30000, isn=777)
    ka.connect()
    for p in ka.captured:
        wire.capture(p, 0.001)
    run(wire, eng, 20000, 0.5)
    route.broken = True
    run(wire, eng, 20100, 3.0)
    assert eng.brake.brake.engaged(T)
    key = (CLIENT, 30000, TARGET, 8080)
    assert key in eng.sessions  # not ended by the brake
    n = len(ka.captured)
    ka.request(b"GET 50 /after")
    before = len(wire.sent)
    for p in ka.captured[n:]:
        wire.capture(p, 0.001)
    sent = [parse_ipv4_tcp(p) for p in wire.sent[before:]]
    assert any(s.sport == 30000 and s.payload.startswith(b"GET 50 /after") for s in sent)


def test_a_share_of_failures_below_the_ratio_does_not_brake():
    eng, wire, route = make()
    lost = []

    def drop(rec):  # every other session's SYN-ACK is lost (a lossy path, not a lost route)
        r = parse_record(rec)
        if r.flags & SYN and r.dport % 2:
            lost.append(r)
            return True
        return False
    wire.drop_records = drop
    run(wire, eng, 20000, 5.0)
    assert len(lost) > 50
    assert not eng.brake.brake.engaged(T) and eng.stats.c["drop:brake"] == 0
    eng2, wire2, _ = make(ratio=0.4)
    wire2.drop_records = drop
    run(wire2, eng2, 20000, 5.0)
    assert eng2.brake.brake.engaged(T) or eng2.stats.c["brake_trips:target=10.1.0.12:8080"]


def test_no_brake_counts_failures_but_never_refuses():
    eng, wire, route = make(enabled=False)
    run(wire, eng, 20000, 0.5)
    route.broken = True
    run(wire, eng, 20100, 5.0)
    c = eng.stats.c
    assert c["drop:brake"] == 0 and not eng.brake.brake.engaged(T)
    assert c["handshakes_failed:target=10.1.0.12:8080"] > 100
    assert "brake_engaged:target=10.1.0.12:8080" not in eng.stats.gauges


def test_probe_backoff_and_rst_answer_releases():
    b = Brake(BrakeConfig(min_failures=2, ratio=1.0, synack_wait=0.5))
    k = [(CLIENT, 1000 + i, TARGET, 8080) for i in range(3)]
    b.syn_sent(k[0], 0.0)
    b.syn_sent(k[1], 0.1)
    assert b.expire(0.55) == [] and b.expire(0.6) == [T]
    assert b.engaged(T) and b.next_deadline() == pytest.approx(1.6)
    sent_at = []
    t = 0.6
    while t < 20:
        t = round(t + 0.05, 2)
        for tt in b.probes_due(t):
            b.probe_sent(tt, k[2], 1, t)
            sent_at.append(t)
    gaps = [round(b - a, 2) for a, b in zip(sent_at, sent_at[1:])]
    assert sent_at[0] == pytest.approx(1.6)
    assert gaps[:4] == [2.0, 4.0, 4.0, 4.0]
    assert b.probe_for(k[2]) == T
    b.release(T, t)
    assert not b.engaged(T) and b.events[-1][0] == "released"


def test_a_link_back_probes_at_once_instead_of_after_the_backed_off_gap():
    b = Brake(BrakeConfig(min_failures=2, ratio=1.0, synack_wait=0.5))
    k = [(CLIENT, 1000 + i, TARGET, 8080) for i in range(3)]
    b.syn_sent(k[0], 0.0)
    b.syn_sent(k[1], 0.1)
    assert b.expire(0.6) == [T]
    b.probes_due(1.6)
    b.probe_sent(T, k[2], 1, 1.6)
    assert b.probes_due(2.2) == []  # unanswered: the next one only at 1.6 + 2.0
    assert b.next_deadline() == pytest.approx(3.6)
    b.probe_now(2.5)  # the control link is back
    assert b.next_deadline() == pytest.approx(2.5) and b.probes_due(2.5) == [T]
    b.probe_sent(T, k[2], 2, 2.5)
    b.probe_now(2.6)  # a probe in flight is not replaced
    assert b.probes_due(2.6) == [] and b.next_deadline() == pytest.approx(3.0)


def test_a_syn_dropped_once_by_a_full_accept_queue_is_not_a_failure():
    """A burst of SYNs into a target whose accept queue is full: the kernel drops them
    silently and answers their retransmission 1 s later.  The way back is fine; the
    brake must not engage (it used to, at 0.5 s, and ended every waiting copy)."""
    b = Brake(BrakeConfig())
    keys = [(CLIENT, 30000 + i, TARGET, 8080) for i in range(10)]
    for i, k in enumerate(keys):
        b.syn_sent(k, i * 0.01)
    assert b.expire(0.9) == []
    for i, k in enumerate(keys):  # the retransmissions at 1 s are answered
        b.answered(k, 1.0 + i * 0.01 + 0.002)
    assert b.expire(5.0) == [] and not b.engaged(T)
    assert b.state(T).failed == 0


def test_bad_brake_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="window"):
        BrakeConfig(window=0).check()
    with pytest.raises(ValueError, match="ratio"):
        BrakeConfig(ratio=1.5).check()
    with pytest.raises(ValueError, match="SYN-ACK wait"):
        BrakeConfig(synack_wait=5.0).check()
