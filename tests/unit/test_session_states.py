"""The session's state machine, containment of internal errors, Karn's rule
and the bound on the inter-request wait (issue 11), against the in-memory target."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from pycopy_engine.core import session_state
from pycopy_engine.core.session import Session
from pycopy_engine.core.session_state import (
    ALLOWED,
    CLOSED,
    ESTABLISHED,
    NEW,
    SYN_SENT,
    TRANSITION_KEY,
    TransitionError,
)
from pycopy_engine.wire.control import make_record
from pycopy_engine.wire.tcpip import ACK, RST, build_ipv4_tcp, parse_ipv4_tcp

from .simtcp import SimClient, SimServer
from .test_engine import CLIENT, ONLINE, TARGET, conversation, make, replay

CORE = Path(__file__).resolve().parents[2] / "pycopy_engine" / "core"


def transitions(eng) -> set:
    return {k for k in eng.stats.c if k.startswith("state:")}


def scenarios():
    """Engines after the situations that move sessions through every state."""
    out = []
    eng, target, wire = make()  # plain keep-alive session, closed by the client
    replay(wire, conversation(3)[0].captured)
    out.append(eng)
    eng, target, wire = make(target_kw={"close_after": 1})  # target closes: rebuilds
    replay(wire, conversation(3, close=False)[0].captured)
    wire.advance(0.5)
    out.append(eng)
    eng, target, wire = make()  # mid-stream: fabricated handshake, then shutdown
    replay(wire, conversation(3, close=False)[0].captured[3:])
    eng.shutdown(wire.now)
    out.append(eng)
    eng, target, wire = make(replicas=2, mem_limit=100 << 20)  # -n 2 at a session cap of 1:
    eng.memory.cap = 1  # opening the second copy evicts the first before its SYN went out
    wire.capture(conversation(1)[0].captured[0])
    assert eng.stats.c["evicted:memory_limit"] == 1
    out.append(eng)
    eng, target, wire = make()  # the target resets our SYN while requests wait: rebuild
    cl = conversation(2, close=False)[0]
    wire.drop_to_target = lambda pkt: True
    wire.capture(cl.captured[2])  # mid-stream request: fabricated SYN, request queued
    rst = build_ipv4_tcp(TARGET, CLIENT, 8080, 40000, 0, (12345 + 1) & 0xFFFFFFFF, RST | ACK, 0)
    eng.on_record(make_record(rst), wire.now)
    wire.drop_to_target = None
    wire.advance(0.5)
    assert len(target.log) == 1
    out.append(eng)
    eng, target, wire = make()  # the target never answers: handshake timeout
    wire.drop_to_target = lambda pkt: True
    replay(wire, conversation(1)[0].captured)
    wire.advance(5.0)
    out.append(eng)
    return out


def test_every_transition_the_engine_makes_is_in_the_table():
    made = set()
    for eng in scenarios():
        made |= transitions(eng)
        assert eng.stats.c["state_error"] == 0
    allowed = set(TRANSITION_KEY.values())
    assert made <= allowed, made - allowed
    assert allowed == {k for row in session_state.ROWS for k in row if k}  # one table, two views
    # the scenarios really cover the machine: every state entered, rebuilds included
    for key in ("state:NEW->SYN_SENT", "state:SYN_SENT->ESTABLISHED", "state:ESTABLISHED->CLOSED",
                "state:ESTABLISHED->REBUILD_WAIT", "state:REBUILD_WAIT->SYN_SENT",
                "state:NEW->CLOSED", "state:SYN_SENT->CLOSED", "state:SYN_SENT->REBUILD_WAIT"):
        assert key in made, key


def test_a_forbidden_transition_raises_and_is_counted():
    eng, target, wire = make()
    s = Session(eng, ("f",), 0, (CLIENT, 1, ONLINE, 2), 0.0)
    with pytest.raises(TransitionError, match="NEW -> ESTABLISHED"):
        s._set_state(ESTABLISHED)
    assert s.state is NEW and eng.stats.c["state_error"] == 1
    s._set_state(SYN_SENT)
    s._set_state(CLOSED)
    for new in ALLOWED:
        with pytest.raises(TransitionError):
            s._set_state(new)  # CLOSED is terminal
    assert eng.stats.c["state_error"] == len(ALLOWED) + 1


@pytest.fixture()
def patch_table(monkeypatch):
    def patch(state, allowed):
        monkeypatch.setitem(session_state.ALLOWED, state, allowed)
        session_state.compile_table()

    yield patch
    monkeypatch.undo()
    session_state.compile_table()


def test_a_transition_missing_from_the_table_ends_the_session_as_internal_error(patch_table):
    patch_table(SYN_SENT, frozenset({CLOSED}))
    eng, target, wire = make()
    replay(wire, conversation(2)[0].captured)
    c = eng.stats.c
    assert c["state_error"] >= 1
    assert c["state_error"] == c["sessions_failed:internal_error"] == c["internal_error:TransitionError"]
    assert "state:SYN_SENT->ESTABLISHED" not in c and target.rst_rcvd >= 1


def test_state_changes_only_in_set_state():
    """One place where transitions happen: no other session code assigns ``.state``
    (other core modules, such as the HTTP/1.x decoder's, have states of their own)."""
    bad = []
    for path in CORE.glob("*.py"):
        if path.name not in ("engine.py", "brake.py", "memory.py", "tee.py") and not (
                path.name.startswith("session")):
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
                for t in targets:
                    if isinstance(t, ast.Attribute) and t.attr == "state":
                        if (path.name, fn.name) not in {("session.py", "_set_state"),
                                                        ("session_base.py", "__init__")}:
                            bad.append(f"{path.name}:{node.lineno} in {fn.name}")
    assert not bad, bad


# ---------------------------------------------------------------- containment


@pytest.mark.pure_only  # makes a Session method raise
@pytest.mark.parametrize("where", ["on_client", "on_response", "pump"])
def test_exception_in_one_session_resets_it_and_the_others_carry_on(monkeypatch, caplog, where):
    eng, target, wire = make()
    orig = getattr(Session, where)
    doomed = {40001, 40002}

    def failing(self, *args):
        if self.cport in doomed and self.requests >= 1:
            doomed.discard(self.cport)  # once per connection
            raise ValueError("boom")
        orig(self, *args)

    monkeypatch.setattr(Session, where, failing)
    caplog.set_level(logging.ERROR, logger="pycopy_engine.core.engine")
    convs = [conversation(3, port=40000 + i, isn=1000 * (i + 1)) for i in range(4)]
    for cl, _online in convs:
        for pkt in cl.captured[:4]:  # SYN, ACK, request 1, client ACK
            wire.capture(pkt)
    assert {p[1] for p, _l in target.log} == {40000, 40001, 40002, 40003}
    for cl, _online in convs:
        replay(wire, cl.captured[4:])
    c = eng.stats.c
    assert c["sessions_failed:internal_error"] == 2 and c["internal_error:ValueError"] == 2
    assert c["rst_sent:internal_error"] == 2
    # their later segments are dropped, not turned into fabricated sessions
    assert c["sessions_opened"] == 4 and c["drop:internal_error"] > 0
    # the target side of the failed sessions was reset, the others closed cleanly
    assert target.rst_rcvd == 2
    for port in (40000, 40003):
        assert [l for p, l in target.log if p[1] == port] == [
            l for _p, l in convs[port - 40000][1].log]
    assert not eng.sessions
    errors = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(errors) == 1 and "ValueError" in errors[0].getMessage()  # logged once per type
    # and the engine still replays new sessions
    cl, online = conversation(2, port=41000, isn=77)
    replay(wire, cl.captured)
    assert [l for p, l in target.log if p[1] == 41000] == [l for _p, l in online.log]


def test_exception_in_a_timer_is_contained(monkeypatch):
    eng, target, wire = make()
    orig = Session.on_timer

    def on_timer(self, now):
        if self.cport == 40000:
            raise KeyError("timer")
        orig(self, now)

    monkeypatch.setattr(Session, "on_timer", on_timer)
    wire.drop_to_target = lambda pkt: True  # SYNs lost: the SYN timer fires
    for i in range(2):
        wire.capture(conversation(1, port=40000 + i, isn=5 + i)[0].captured[0])
    wire.advance(1.5)
    c = eng.stats.c
    assert c["internal_error:KeyError"] == 1
    assert [s.cport for s in eng.sessions.values()] == [40001]
    assert c["syn_retransmit"] == 1  # the other session's timer still ran


# ---------------------------------------------------------------- pacing


def late_syn_conversation(n, sizes, syn_delay=1.0):
    """A keep-alive client whose first SYN the online server answered only
    after the retransmission: captured SYN, SYN again after ``syn_delay``."""
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, 40000, isn=4242)
    cl.connect()
    for i in range(n):
        cl.request(b"GET %d /r%d" % (sizes[i % len(sizes)], i))
    cl.close()
    syn = cl.captured[0]
    return [(0.0, syn), (syn_delay, syn), (0.001, cl.captured[1])] + [
        (0.01, p) for p in cl.captured[2:]]


def sent_times(wire, target):
    """Fake-clock time at which each request reached the target."""
    times = []
    orig = target.receive

    def spy(pkt):
        if parse_ipv4_tcp(pkt).plen:
            times.append(wire.now)
        orig(pkt)

    target.receive = spy
    return times


def test_karn_no_rtt_sample_from_a_retransmitted_syn():
    """The handshake ACK came 1 s after the first SYN only because the SYN was
    retransmitted: the RTO must stay at its floor, so a data segment the
    target lost is retransmitted after 0.2 s, not after seconds."""
    eng, target, wire = make()
    times = sent_times(wire, target)
    lost = []

    def lose_first_data(pkt):
        if parse_ipv4_tcp(pkt).plen and not lost:
            lost.append(wire.now)
            return True
        return False

    wire.drop_to_target = lose_first_data
    for dt, pkt in late_syn_conversation(1, (100,))[:3]:
        wire.capture(pkt, dt)
    for dt, pkt in late_syn_conversation(1, (100,))[3:4]:  # the request
        wire.capture(pkt, dt)
    wire.advance(5.0)
    assert eng.stats.c["rtt_sample_skipped:syn_retransmitted"] == 1
    assert lost and len(times) == 1, times  # the spy sees what reached the target
    assert times[0] - lost[0] <= 0.25, times[0] - lost[0]


def test_inter_request_wait_is_bounded_when_answers_differ():
    """Online's RTT was a genuine 0.5 s and the target answers with other sizes:
    each request still reaches the target within 100 ms of its online gap."""
    eng, target, wire = make(target_kw={"respond": lambda req: b"T" * 60})  # shorter than online's
    times = sent_times(wire, target)
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, 40000, isn=4242)
    cl.connect()
    for i in range(10):
        cl.request(b"GET %d /r%d" % (100 + i * 50, i))
    cl.close()
    wire.capture(cl.captured[0], 0.0)
    wire.capture(cl.captured[1], 0.5)  # the handshake's ACK, one RTT later
    gaps = []
    for pkt in cl.captured[2:]:
        wire.capture(pkt, 0.02)
        if parse_ipv4_tcp(pkt).plen:
            gaps.append(0.02 * 2)  # online: request, client ACK, next request
    wire.advance(3.0)
    assert len(times) == 10 and len(target.log) == 10
    later = [times[k] - times[k - 1] - 0.04 for k in range(1, 10)]
    assert max(later) <= 0.100, later


# ---------------------------------------------------------------- endings


def test_client_rst_reaches_the_target_after_all_data_before_it():
    """Half a POST body then RST, and the target lost a body segment: the RST
    waits for the retransmission to be acknowledged, so the target holds every
    byte the online server got when the RST arrives, at the same sequence."""
    from pycopy_engine.wire.tcpip import PSH

    eng, target, wire = make()
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, 40000, isn=900)
    cl.connect()
    cl._send(ACK | PSH, b"POST 10 " + b"x" * 4000)  # no newline: the request never completes
    cl._send(RST | ACK)
    lost = []
    at_rst = []
    orig = target.receive

    def spy(pkt):
        seg = parse_ipv4_tcp(pkt)
        if seg.flags & RST:
            conn = target.conns.get((CLIENT, 40000))
            at_rst.append((seg.seq, conn.rcv_nxt if conn else None))
        orig(pkt)

    def lose_one(pkt):
        seg = parse_ipv4_tcp(pkt)
        if seg.plen and not lost and seg.seq != 901:  # the second body segment
            lost.append(seg.seq)
            return True
        return False

    target.receive = spy
    wire.drop_to_target = lose_one
    replay(wire, cl.captured)
    wire.advance(2.0)
    assert lost and eng.stats.c["retransmit"] >= 1
    assert len(at_rst) == 1
    seq, rcv_nxt = at_rst[0]
    assert seq == (900 + 1 + 4008) and rcv_nxt == seq  # all 4008 bytes in, RST in place
    assert target.rst_rcvd == 1 and not eng.sessions
