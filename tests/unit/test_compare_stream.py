"""core/compare_stream.py: in-order, causal feeding of one connection's two
byte streams (retransmissions, reordering, answers read before their request,
capture holes, RST and FIN)."""

from __future__ import annotations

from pycopy_engine.core.compare_stream import FIN, RST, SYN, Pair

C0, S0 = 1000, 0xFFFFFF00  # client and server ISNs (the server's wraps)


class Sink:
    def __init__(self) -> None:
        self.events: list = []

    def request_data(self, data: bytes, now: float) -> None:
        self.events.append(("req", data, now))

    def answer_data(self, data: bytes, now: float) -> None:
        self.events.append(("ans", data, now))

    def close(self, now: float, reason: str = "closed") -> None:
        self.events.append(("close", reason.encode(), now))

    def text(self):
        out: list = []
        for kind, data, _ in self.events:
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + data)
            else:
                out.append((kind, data))
        return out


def handshake(p: Pair) -> None:
    p.segment(False, C0, None, SYN, b"", 0.0)
    p.segment(True, S0, C0 + 1, SYN | 0x10, b"", 0.0)


def test_in_order_with_retransmissions_and_reordering():
    s = Sink()
    p = Pair(s)
    handshake(p)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    p.segment(False, c, v, 0x18, b"GET /a", 1.0)
    p.segment(False, c + 6, v, 0x18, b" HTTP/1.1\r\n\r\n", 1.1)  # (14 bytes)
    p.segment(False, c, v, 0x18, b"GET /a HTTP", 1.2)  # retransmitted, overlapping
    p.segment(True, v + 4, c + 19, 0x18, b"5678", 1.3)  # before its start
    p.segment(True, v, c + 19, 0x18, b"1234", 1.4)
    assert s.text() == [("req", b"GET /a HTTP/1.1\r\n\r\n"), ("ans", b"12345678")]
    assert p.dup_bytes == 11 and p.gaps == 0


def test_answer_read_before_its_request_is_held_until_the_request_is_delivered():
    s = Sink()
    p = Pair(s)
    handshake(p)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    p.segment(False, c, v, 0x18, b"req0", 1.0)
    p.segment(True, v, c + 4, 0x18, b"ans0", 1.1)
    # the answer to req1 was read first (another socket): it acknowledges c+8
    p.segment(True, v + 4, c + 8, 0x18, b"ans1", 1.3)
    assert s.text() == [("req", b"req0"), ("ans", b"ans0")]
    p.segment(False, c + 4, v + 4, 0x18, b"req1", 1.2)
    assert s.text() == [("req", b"req0"), ("ans", b"ans0"), ("req", b"req1"), ("ans", b"ans1")]
    # ... and the next request that acknowledges an answer not yet read waits for it
    p.segment(False, c + 8, v + 12, 0x18, b"req2", 1.5)
    assert s.text()[-1] == ("ans", b"ans1")
    p.segment(True, v + 8, c + 8, 0x18, b"ans+", 1.4)
    assert s.text()[-2:] == [("ans", b"ans1ans+"), ("req", b"req2")]


def test_a_hole_is_skipped_after_the_stall_time_and_counted():
    s = Sink()
    p = Pair(s, stall=0.5)
    handshake(p)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    p.segment(False, c, v, 0x18, b"req0", 1.0)
    p.segment(True, v + 100, c + 4, 0x18, b"tail", 1.1)  # 100 bytes lost in capture
    p.tick(1.3)
    assert s.text() == [("req", b"req0")]
    p.tick(1.7)
    assert s.text() == [("req", b"req0"), ("ans", b"tail")]
    assert p.gaps == 1 and p.gap_bytes == 100


def test_held_bytes_are_bounded():
    s = Sink()
    p = Pair(s, stall=100.0, max_held=1000)
    handshake(p)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    for i in range(1, 4):  # the first 400 answer bytes never come
        p.segment(True, v + i * 400, c, 0x10, b"x" * 400, 1.0)
    assert p.held_bytes == 0 and p.gaps == 1  # forced at the third: 1200 > 1000
    assert s.text() == [("ans", b"x" * 1200)]


def test_fin_closes_once_the_answer_is_complete_and_rst_after_the_stall():
    s = Sink()
    p = Pair(s)
    handshake(p)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    p.segment(False, c, v, 0x18, b"req", 1.0)
    p.segment(True, v + 3, c + 3, FIN | 0x10, b"", 1.2)  # FIN seen before the data
    assert not p.closed
    p.segment(True, v, c + 3, 0x18, b"abc", 1.3)
    assert p.closed and s.events[-1][0] == "close"
    s2 = Sink()
    q = Pair(s2, stall=0.5)
    handshake(q)
    q.segment(False, c, v, 0x18, b"req", 1.0)
    q.segment(True, v, c, RST, b"", 1.0)
    q.segment(True, v, c + 3, 0x18, b"late", 1.1)  # arrives after the RST, from another socket
    q.tick(1.2)
    assert not q.closed
    q.tick(1.6)
    assert q.closed and s2.text() == [("req", b"req"), ("ans", b"late"), ("close", b"reset")]


def test_answers_are_never_timed_before_the_request():
    s = Sink()
    p = Pair(s)
    handshake(p)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    p.segment(False, c, v, 0x18, b"req", 5.0)
    p.segment(True, v, c + 3, 0x18, b"ans", 4.9)  # a corrected target time a bit early
    assert s.events[-1] == ("ans", b"ans", 5.0)


def test_a_request_that_waited_for_an_answer_keeps_its_own_time():
    s = Sink()
    p = Pair(s)
    handshake(p)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    p.segment(False, c, v, 0x18, b"req0", 1.0)
    # req1 (sent at 1.10) acknowledges ans0, whose bytes come only at 1.25
    p.segment(False, c + 4, v + 4, 0x18, b"req1", 1.10)
    p.segment(True, v, c + 4, 0x18, b"ans0", 1.25)
    p.segment(True, v + 4, c + 8, 0x18, b"ans1", 1.20)
    assert [(k, d, t) for k, d, t in s.events] == [
        ("req", b"req0", 1.0), ("ans", b"ans0", 1.25), ("req", b"req1", 1.10),
        ("ans", b"ans1", 1.25)]  # an answer never goes back in time


def test_start_at_drops_what_came_before_the_copy_and_the_answers_to_it():
    s = Sink()
    p = Pair(s)
    c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
    # an older connection: req0 and its answer, then req1 where the copy starts
    p.start_at(c + 4)
    p.segment(False, c, v, 0x18, b"req0", 1.0)  # before the start: trimmed
    p.segment(True, v, c + 4, 0x18, b"ans0", 1.1)  # answers req0: skipped
    p.segment(True, v, c + 4, 0x18, b"ans0", 1.15)  # retransmitted: skipped
    p.segment(False, c + 4, v + 4, 0x18, b"req1", 1.2)
    p.segment(True, v + 4, c + 8, 0x18, b"ans1", 1.3)
    assert s.text() == [("req", b"req1"), ("ans", b"ans1")]
    assert p.skipped == 1 and p.dup_bytes == 8 and p.gaps == 0
    p.start_at(c + 8)  # too late: request bytes were delivered
    p.segment(False, c + 8, v + 8, 0x18, b"req2", 1.4)
    assert s.text()[-1] == ("req", b"req2")


def test_start_at_the_clients_syn_keeps_a_greeting():
    for syn_first in (True, False):
        s = Sink()
        p = Pair(s)
        c, v = C0 + 1, (S0 + 1) & 0xFFFFFFFF
        if syn_first:
            handshake(p)
        p.start_at(c)  # the copy starts with the client's own SYN
        if not syn_first:
            handshake(p)
        p.segment(True, v, c, 0x18, b"220 hello", 1.0)  # server speaks first
        p.segment(False, c, v + 9, 0x18, b"HELO", 1.1)
        assert s.text() == [("ans", b"220 hello"), ("req", b"HELO")], syn_first
        assert p.skipped == 0
