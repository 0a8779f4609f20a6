"""core/compare.py: the online connection and a target copy, fed as tcpcopy
sees them (captured client and server packets, packets it sent, intercept's
records and payload items), joined into one record per request."""

from __future__ import annotations

import json

import pytest

from pycopy_engine.core.compare import Comparer
from pycopy_engine.core.stats import Stats
from pycopy_engine.wire.control import make_record
from pycopy_engine.wire.tcpip import ACK, FIN, SYN, build_ipv4_tcp

CLI, ONL, TGT = bytes([10, 1, 0, 10]), bytes([10, 1, 0, 11]), bytes([10, 1, 0, 12])
CPORT, COPY_PORT = 40000, 40123
PSH = 0x08


def pkt(src, dst, sport, dport, seq, ack, flags, data=b""):
    return build_ipv4_tcp(src, dst, sport, dport, seq, ack, flags, 65535, payload=data)


class World:
    def __init__(self, timeout: float = 5.0) -> None:
        self.flow = (CLI, CPORT, ONL, 80, 0)
        self.key = (CLI, COPY_PORT, TGT, 8080)
        self.stats = Stats()
        self.copied = True
        self.cmp = Comparer(self.stats,
                            lambda k: (self.flow, 0) if k == self.key and self.copied else None,
                            lambda f: f == self.flow and self.copied, timeout=timeout,
                            wall_offset=1000.0)

    # online
    def client(self, seq, ack, flags, data, now):
        self.cmp.on_online(pkt(CLI, ONL, CPORT, 80, seq, ack, flags, data), now)

    def server(self, seq, ack, flags, data, now):
        self.cmp.on_online(pkt(ONL, CLI, 80, CPORT, seq, ack, flags, data), now)

    # target copy
    def sent(self, seq, ack, flags, data, now):
        self.cmp.on_sent(pkt(CLI, TGT, COPY_PORT, 8080, seq, ack, flags, data), now)

    def target(self, seq, ack, flags, data, now, item_later=0.0):
        """The target's answer: the header record, and the payload item if any."""
        p = pkt(TGT, CLI, 8080, COPY_PORT, seq, ack, flags, data)
        self.cmp.on_record(make_record(p), now)
        if data:
            self.cmp.on_items([(CLI, COPY_PORT, TGT, 8080, seq, ack, flags, data)],
                              now + item_later)


REQ = [b"GET /users/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)]


def answer(status: int, body: bytes) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status, len(body), body)


def run_exchange(w: World, target_status=(200, 200, 200), path_delay=0.010, drop_target=(),
                 item_later=0.0, isns=(5000, 9000, 70000), start=0.0):
    c0, s0, t0 = isns
    w.client(c0, 0, SYN, b"", start)
    w.server(s0, c0 + 1, SYN | ACK, b"", start)
    w.sent(c0, 0, SYN, b"", start)
    w.target(t0, c0 + 1, SYN | ACK, b"", start + path_delay)  # handshake: path measured
    c, s, t = c0 + 1, s0 + 1, t0 + 1
    now = start + 1.0
    for i, req in enumerate(REQ):
        body = b'{"id": %d, "name": "n%d"}' % (i, i)
        ans = answer(200, body)
        w.client(c, s, ACK | PSH, req, now)
        # the online answer, 2 ms later
        w.server(s, c + len(req), ACK | PSH, ans, now + 0.002)
        # the copy leaves tcpcopy 1 ms after the capture; the target takes 5 ms
        w.sent(c, t, ACK | PSH, req, now + 0.001)
        tans = answer(target_status[i], body)
        if i not in drop_target:
            w.target(t, c + len(req), ACK | PSH, tans, now + 0.001 + 0.005 + path_delay,
                     item_later)
        c += len(req)
        s += len(ans)
        t += len(tans)
        now += 0.1
    return now


def test_a_reused_client_port_is_another_connection_numbered_from_0():
    """The client reuses its port for a new connection (the server closed
    first: its TIME_WAIT takes a higher ISN): records of the two connections
    share the flow text and the request numbers, not ``conn``."""
    w = World()
    now = run_exchange(w)
    now = run_exchange(w, isns=(800000, 900000, 700000), start=now + 1.0)
    w.cmp.finish(now + 1.0)
    recs = w.cmp.take_records()
    assert [(r["conn"], r["n"]) for r in recs] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert {r["flow"] for r in recs} == {"10.1.0.10:40000"}
    assert all(r["answers"]["10.1.0.12:8080"] is not None for r in recs)


def test_each_request_gets_the_online_and_the_target_answer():
    w = World()
    now = run_exchange(w, target_status=(200, 404, 200))
    w.cmp.on_timer(now)
    recs = w.cmp.take_records()
    assert [r["n"] for r in recs] == [0, 1, 2]
    json.dumps(recs)  # serialisable
    for i, r in enumerate(recs):
        assert r["flow"] == "10.1.0.10:40000" and r["proto"] == "http"
        assert r["req"]["method"] == "GET" and r["req"]["path"] == "/users/%d" % i
        assert set(r["answers"]) == {"online", "10.1.0.12:8080"}
        on, tg = r["answers"]["online"], r["answers"]["10.1.0.12:8080"]
        assert on["status"] == 200 and tg["status"] == (404 if i == 1 else 200)
        assert on["fields"]["id"] == i and tg["fields"]["name"] == "n%d" % i
        assert abs(on["first"] - 2.0) < 0.01
        # the target's 5 ms, once the 10 ms path measured by the handshake is taken off
        assert abs(tg["first"] - 5.0) < 0.01, tg
        assert abs(r["t"] - (1000.0 + 1.0 + 0.1 * i)) < 1e-6
    assert w.stats.c["compare_records"] == 3 and w.stats.c["compare_timeouts"] == 0


def test_a_missing_target_answer_is_written_after_the_timeout():
    w = World(timeout=2.0)
    now = run_exchange(w, drop_target=(2,))
    w.cmp.on_timer(now)
    assert [r["n"] for r in w.cmp.take_records()] == [0, 1]
    w.cmp.on_timer(now + 1.0)
    assert w.cmp.take_records() == []
    for k in range(1, 5):  # tcpcopy retransmits the unanswered request: no progress
        w.sent(5001 + 2 * len(REQ[0]), 70001, ACK | PSH, REQ[2], now + 0.5 * k)
    w.cmp.on_timer(now + 2.5)
    (r,) = w.cmp.take_records()
    assert r["n"] == 2 and r["answers"]["10.1.0.12:8080"] is None
    assert r["errors"] == {"10.1.0.12:8080": "timeout"}
    assert r["answers"]["online"]["status"] == 200
    assert w.stats.c["compare_timeouts"] == 1 and w.stats.c["compare_records"] == 3
    # the answer comes after its record was written: counted, not a second record
    tans = answer(200, b'{"id": 2, "name": "n2"}')
    w.target(70001 + 2 * len(tans), 5001 + len(REQ[0]) * 3, ACK | PSH, tans, now + 3)
    w.cmp.finish(now + 4)
    assert w.cmp.take_records() == [] and w.stats.c["compare_late_answers"] == 1


def test_unreplicated_flows_are_not_observed():
    w = World()
    w.copied = False  # e.g. -r sampled it out
    run_exchange(w)
    assert w.cmp.orphan_count > 0  # held a moment, in case its copy starts
    w.cmp.on_timer(10.0)
    assert w.cmp.take_records() == [] and not w.cmp.flows and w.cmp.orphan_count == 0


def test_packets_read_before_the_engine_knew_the_flow_are_replayed():
    w = World()
    w.copied = False  # the engine has not read the SYN yet (another socket)
    c0, s0 = 5000, 9000
    req = REQ[0]
    w.client(c0, 0, SYN, b"", 0.0)
    w.server(s0, c0 + 1, SYN | ACK, b"", 0.001)
    w.client(c0 + 1, s0 + 1, ACK | PSH, req, 0.002)
    w.server(s0 + 1, c0 + 1 + len(req), ACK | PSH, answer(200, b"{}"), 0.005)
    assert not w.cmp.flows
    w.copied = True
    w.sent(c0, 0, SYN, b"", 0.01)  # the copy starts: the held packets are replayed
    w.cmp.on_timer(0.02)
    w.cmp.finish(0.03)
    (r,) = w.cmp.take_records()
    assert r["answers"]["online"]["status"] == 200 and abs(r["answers"]["online"]["first"] - 3) < .01


def keepalive_older_than_tcpcopy(w: World, order: str) -> list:
    """A keep-alive connection open before tcpcopy: request A is seen only by
    the comparer's capture (the engine's had not started), the engine's copy
    starts with B (a fake SYN at B's seq - 1).  ``order`` is when the comparer
    reads A and B: "orphans" (before the copy's SYN) or "after"."""
    c, s, t0 = 5000, 9000, 70000
    a_req, b_req = REQ[0], REQ[1]
    a_ans, b_ans = answer(200, b'{"id": 0}'), answer(200, b'{"id": 1}')
    w.copied = False
    online = [(w.client, c, s, ACK | PSH, a_req, 0.000),
              (w.server, s, c + len(a_req), ACK | PSH, a_ans, 0.002),
              (w.client, c + len(a_req), s + len(a_ans), ACK | PSH, b_req, 0.050),
              (w.server, s + len(a_ans), c + len(a_req) + len(b_req), ACK | PSH, b_ans, 0.052)]
    if order == "orphans":
        for f, *args in online:
            f(*args)
    w.copied = True
    cb = c + len(a_req)
    w.sent(cb - 1, 0, SYN, b"", 0.051)  # the engine's fake SYN: B's seq - 1
    w.target(t0, cb, SYN | ACK, b"", 0.052)
    if order == "after":
        for f, *args in online:
            f(*args)
    w.sent(cb, t0 + 1, ACK | PSH, b_req, 0.053)
    w.target(t0 + 1, cb + len(b_req), ACK | PSH, answer(500, b'{"id": 1}'), 0.060)
    w.cmp.finish(1.0)
    return w.cmp.take_records()


@pytest.mark.parametrize("order", ["orphans", "after"])
def test_a_connection_older_than_tcpcopy_is_joined_from_the_copys_first_request(order):
    w = World()
    recs = keepalive_older_than_tcpcopy(w, order)
    # A was never replicated: no record, and B is request 0 on both sides
    assert [(r["n"], r["req"]["path"]) for r in recs] == [(0, "/users/1")], recs
    (r,) = recs
    assert r["answers"]["online"]["status"] == 200 and r["answers"]["online"]["fields"]["id"] == 1
    assert r["answers"]["10.1.0.12:8080"]["status"] == 500
    # A's answer (A's request bytes are trimmed, as before the stream's start)
    assert w.stats.c["compare_skipped_before_copy"] >= 1


def test_a_copy_that_starts_before_the_comparers_capture_is_joined_from_the_first_common_request():
    """The reverse: the engine copied A and B, the comparer's capture saw only
    B (it read from the online side later): A's target answer has no online
    one and is not joined; B is request 0 on both sides."""
    w = World()
    c, s, t0 = 5000, 9000, 70000
    a_req, b_req = REQ[0], REQ[1]
    a_ans, b_ans = answer(200, b'{"id": 0}'), answer(200, b'{"id": 1}')
    cb = c + len(a_req)
    w.sent(c - 1, 0, SYN, b"", 0.0)  # the fake SYN at A's seq - 1
    w.target(t0, c, SYN | ACK, b"", 0.001)
    w.sent(c, t0 + 1, ACK | PSH, a_req, 0.002)
    ta = answer(200, b'{"id": 0}')
    w.target(t0 + 1, cb, ACK | PSH, ta, 0.004)
    # online, from B on (with the answer to A first: it acknowledges only A)
    w.server(s, cb, ACK | PSH, a_ans, 0.003)
    w.client(cb, s + len(a_ans), ACK | PSH, b_req, 0.050)
    w.server(s + len(a_ans), cb + len(b_req), ACK | PSH, b_ans, 0.052)
    w.sent(cb, t0 + 1 + len(ta), ACK | PSH, b_req, 0.051)
    w.target(t0 + 1 + len(ta), cb + len(b_req), ACK | PSH, answer(500, b'{"id": 1}'), 0.060)
    w.cmp.on_timer(0.1)
    w.cmp.finish(1.0)
    recs = w.cmp.take_records()
    assert [(r["n"], r["req"]["path"]) for r in recs] == [(0, "/users/1")], recs
    (r,) = recs
    assert r["answers"]["online"]["fields"]["id"] == 1 and "errors" not in r
    assert r["answers"]["10.1.0.12:8080"]["status"] == 500
    assert w.stats.c["compare_before_copy"] == 1  # A, on the target side only


def test_target_fin_closes_and_flow_is_forgotten():
    w = World()
    now = run_exchange(w)
    w.client(5001 + sum(map(len, REQ)), 0, FIN | ACK, b"", now)
    w.cmp.on_timer(now)
    assert len(w.cmp.take_records()) == 3
    assert w.cmp.flows  # still open: no FIN from the servers yet
    w.cmp.finish(now + 1)
    assert not w.cmp.flows and not w.cmp.copies


def test_counters_are_exported_to_prometheus():
    from pycopy_engine.cli.statsout import GAUGES
    from pycopy_engine.io.metrics import render_prometheus

    w = World(timeout=2.0)
    now = run_exchange(w, drop_target=(2,))
    w.cmp.on_timer(now + 3)
    text = render_prometheus("pycopy_tcpcopy", w.stats.snapshot(), GAUGES)
    assert "pycopy_tcpcopy_compare_records_total 3\n" in text
    assert "pycopy_tcpcopy_compare_timeouts_total 1\n" in text
    assert "# TYPE pycopy_tcpcopy_compare_flows gauge" in text


def test_target_answers_are_timed_by_their_header_record():
    w = World()
    now = run_exchange(w, item_later=0.020)  # each payload item 20 ms after its record
    w.cmp.on_timer(now)
    for r in w.cmp.take_records():
        assert abs(r["answers"]["10.1.0.12:8080"]["first"] - 5.0) < 0.01, r


def test_a_copy_behind_online_but_busy_is_waited_for():
    w = World(timeout=1.0)
    c0, s0, t0 = 5000, 9000, 70000
    w.client(c0, 0, SYN, b"", 0.0)
    w.server(s0, c0 + 1, SYN | ACK, b"", 0.0)
    c, s = c0 + 1, s0 + 1
    for i, req in enumerate(REQ):  # online answers all three at once
        ans = answer(200, b"{}")
        w.client(c, s, ACK | PSH, req, 0.1 * i)
        w.server(s, c + len(req), ACK | PSH, ans, 0.1 * i + 0.001)
        c, s = c + len(req), s + len(ans)
    w.sent(c0, 0, SYN, b"", 0.0)
    w.target(t0, c0 + 1, SYN | ACK, b"", 0.001)
    c, t = c0 + 1, t0 + 1
    recs: list = []
    for i, req in enumerate(REQ):  # the copy runs 1.5 s apart per request (target is slow)
        now = 1.0 + 1.5 * i
        w.sent(c, t, ACK | PSH, req, now)
        w.cmp.on_timer(now + 0.5)  # request i is more than the timeout behind online's
        recs += w.cmp.take_records()
        assert len(recs) == i  # the busy copy is waited for
        tans = answer(201, b"{}")
        w.target(t, c + len(req), ACK | PSH, tans, now + 1.0)
        c, t = c + len(req), t + len(tans)
    w.cmp.on_timer(6.0)
    recs += w.cmp.take_records()
    assert [r["answers"]["10.1.0.12:8080"]["status"] for r in recs] == [201] * 3
    assert all(abs(r["answers"]["10.1.0.12:8080"]["first"] - 999.0) < 0.01 for r in recs)
    assert w.stats.c["compare_timeouts"] == 0 and w.stats.c["compare_records"] == 3


def test_path_correction_is_the_targets_smallest_recent_handshake_at_answer_time():
    """A keep-alive copy whose handshake was slow (30 ms: tcpcopy busy at a run's
    start) is corrected by a later connection's 1 ms handshake to the same
    target, not by its own 30 ms; a burst of slow handshakes after that does not
    undo it; handshakes older than PATH_WINDOW are forgotten."""
    from pycopy_engine.core.compare import PATH_WINDOW

    w = World()
    other = (CLI, COPY_PORT + 1, TGT, 8080)
    flows = {w.key: (w.flow, 0), other: ((CLI, CPORT + 1, ONL, 80, 0), 0)}
    w.cmp = Comparer(w.stats, flows.get, lambda f: True, timeout=5.0, wall_offset=1000.0)
    c0, s0, t0 = 5000, 9000, 70000
    w.client(c0, 0, SYN, b"", 0.0)
    w.server(s0, c0 + 1, SYN | ACK, b"", 0.0)
    w.sent(c0, 0, SYN, b"", 0.0)
    w.target(t0, c0 + 1, SYN | ACK, b"", 0.030)  # this copy's own handshake: 30 ms

    def handshake(port_off: int, at: float, path: float) -> None:
        w.cmp.on_sent(pkt(CLI, TGT, COPY_PORT + port_off, 8080, 100, 0, SYN), at)
        w.cmp.on_record(make_record(pkt(TGT, CLI, 8080, COPY_PORT + port_off, 500, 101,
                                        SYN | ACK)), at + path)

    handshake(1, 0.5, 0.001)  # another connection to the same target: 1 ms
    c, s, t = c0 + 1, s0 + 1, t0 + 1
    firsts = []
    for i, (at, slow) in enumerate(((1.0, 0), (2.0, 40), (3.0 + PATH_WINDOW, 1))):
        for k in range(slow):  # a burst of new connections, each handshake 20 ms
            handshake(1, at - 0.5 + 0.001 * k, 0.020)
        req, ans = REQ[i], answer(200, b"{}")
        w.client(c, s, ACK | PSH, req, at)
        w.server(s, c + len(req), ACK | PSH, ans, at + 0.001)
        w.sent(c, t, ACK | PSH, req, at + 0.001)
        # the target takes 5 ms; path 1 ms
        w.target(t, c + len(req), ACK | PSH, ans, at + 0.001 + 0.005 + 0.001)
        c, s, t = c + len(req), s + len(ans), t + len(ans)
        w.cmp.on_timer(at + 0.1)
        firsts += [r["answers"]["10.1.0.12:8080"]["first"] for r in w.cmp.take_records()]
    # 1: the 1 ms handshake counts; 2: so it does after forty 20 ms ones;
    # 3: a minute later only the last 20 ms handshake is left (6 ms - 20 ms: never negative)
    assert [round(f, 3) for f in firsts] == [5.0, 5.0, 0.0], firsts


def test_answers_without_any_request_are_still_written_at_the_flows_end():
    """Neither side saw a request byte (the engine knows the flow, no copy has
    started; online only answered a request the capture missed): nothing to
    align on, and the flow's end still writes the answer."""
    w = World()
    w.client(5000, 9000, ACK, b"", 0.0)  # a pure ACK: the flow is known, no request
    w.server(9000, 5000, ACK | PSH, answer(200, b"{}"), 0.01)
    for t in (0.7, 6.0):  # the answer waits 0.5 s for a request; the timeout forces it
        w.cmp.on_timer(t)
    w.cmp.finish(10.0)
    recs = w.cmp.take_records()
    assert len(recs) == 1 and recs[0]["answers"]["online"]["size"] > 0, recs
