"""The two byte streams of one observed TCP connection, in order (sans-IO).

``Pair`` takes the segments of a connection as they were seen (possibly
retransmitted, out of order, and the two directions read from different
sockets or links, so an answer may be read before the request it answers)
and feeds a sink (``core.answers.Exchange``: ``request_data``,
``answer_data``, ``close``) with in-order bytes, in causal order:

- each direction delivers only the bytes at its next expected sequence
  number; retransmitted bytes are trimmed or dropped (``dup_bytes``);
- a segment is held until the other direction has delivered everything its
  ACK number acknowledges (the peer had seen those bytes when it sent it), so
  a request always reaches the sink before the answer that acknowledges it,
  and an answer before the next request that acknowledges it;
- what cannot be delivered for ``stall`` seconds (a segment lost in capture,
  an ACK of bytes never captured), or beyond ``max_held`` held bytes, is
  forced: the hole is skipped and counted (``gaps``, ``gap_bytes``) and the
  ACK condition ignored.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

M32 = 0xFFFFFFFF
FIN, SYN, RST = 0x01, 0x02, 0x04


def seq_lt(a: int, b: int) -> bool:
    return ((a - b) & M32) > 0x7FFFFFFF


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, signed."""
    d = (a - b) & M32
    return d - (1 << 32) if d > 0x7FFFFFFF else d


class Half:
    """One direction: next expected seq, held segments seq -> (data, ack, time)."""

    __slots__ = ("nxt", "held", "held_bytes", "fin_at", "first_held")

    def __init__(self) -> None:
        self.nxt: Optional[int] = None
        self.held: Dict[int, Tuple[bytes, int, float]] = {}
        self.held_bytes = 0
        self.fin_at: Optional[int] = None  # seq of this side's FIN, once seen
        self.first_held = 0.0


class Pair:
    __slots__ = ("sink", "req", "ans", "stall", "max_held", "closed", "dup_bytes", "gaps",
                 "gap_bytes", "last", "req_floor", "ans_floor", "rst_at", "stalls", "answered",
                 "req_bytes", "skipped", "opened", "req_base")

    def __init__(self, sink: Any, stall: float = 0.5, max_held: int = 256 << 10) -> None:
        self.sink = sink
        self.req = Half()
        self.ans = Half()
        self.stall = stall
        self.max_held = max_held
        self.closed = False
        self.dup_bytes = 0
        self.gaps = 0
        self.gap_bytes = 0
        self.last = 0.0  # time of the last segment seen
        # times handed on never go back within a direction (kernel stamps from
        # several CPUs, corrected target times), and an answer is never timed
        # before the request bytes delivered before it; a request is not moved
        # by answer times (it may have waited for an answer's bytes to come)
        self.req_floor = 0.0
        self.ans_floor = 0.0
        self.rst_at: Optional[float] = None  # a RST was seen: close after ``stall``
        self.stalls = 0  # times held bytes were forced out after ``stall``
        self.answered = -1.0  # when answer bytes were last delivered (progress)
        self.req_bytes = 0  # request bytes delivered so far
        self.skipped = 0  # segments dropped: before the start, answers to requests not seen
        self.opened: Optional[int] = None  # the client's SYN seen: its seq + 1
        # the client byte at request-stream offset 0 (the sink's offsets + this =
        # sequence numbers; moved on by the holes skipped in the requests)
        self.req_base: Optional[int] = None

    def start_at(self, seq: int) -> None:
        """The observed stream begins at client byte ``seq`` (a connection older
        than tcpcopy: its copy starts there): request bytes before it are not
        the copy's and are dropped.  A no-op once request bytes were delivered,
        or when the client's SYN was seen at ``seq`` - 1."""
        seq &= M32
        if self.req_bytes or self.closed or self.opened == seq:
            return
        req = self.req
        req.nxt = seq
        for s in [s for s in req.held if not seq_lt(seq, (s + len(req.held[s][0])) & M32)]:
            req.held_bytes -= len(req.held.pop(s)[0])
            self.skipped += 1

    # ------------------------------------------------------------ input

    def segment(self, answer: bool, seq: int, ack: Optional[int], flags: int, data: bytes,
                now: float) -> None:
        """One captured segment; ``ack`` None = no ACK condition (e.g. unknown)."""
        if self.closed:
            return
        self.last = now
        seq &= M32
        h = self.ans if answer else self.req
        if not flags & 7 and data and seq == h.nxt and not h.held and not self.rst_at:
            other = self.req if answer else self.ans
            if ack is None or other.nxt is None or not seq_lt(other.nxt, ack):
                # the common case: the next bytes, nothing held, causally in order
                h.nxt = (seq + len(data)) & M32
                if answer:
                    self.sink.answer_data(data, self._ans_time(now))
                else:
                    if now > self.req_floor:
                        self.req_floor = now
                    if not self.req_bytes:
                        self.req_base = seq
                    self.req_bytes += len(data)
                    self.sink.request_data(data, self.req_floor)
                if other.held or (answer and h.fin_at is not None):
                    self._pump(now)
                return
        if flags & SYN:
            if h.nxt is None:
                h.nxt = (seq + 1) & M32
            seq = (seq + 1) & M32
            if not answer:
                self.opened = seq
        if flags & RST:  # the two directions come from different sockets: wait a little
            if self.rst_at is None:
                self.rst_at = now
            return
        if flags & FIN:
            h.fin_at = (seq + len(data)) & M32
        if data:
            if h.nxt is None:
                h.nxt = seq
            d = seq_diff(seq, h.nxt)
            if d < 0:  # starts before what was delivered: trim the retransmitted part
                if len(data) <= -d:
                    self.dup_bytes += len(data)
                    data = b""
                else:
                    self.dup_bytes += -d
                    data = data[-d:]
                    seq = h.nxt
            if data:
                old = h.held.get(seq)
                if old is not None:
                    if len(old[0]) >= len(data):
                        self.dup_bytes += len(data)
                        data = b""
                    else:
                        h.held_bytes -= len(old[0])
                        self.dup_bytes += len(old[0])
                if data:
                    if not h.held:
                        h.first_held = now
                    h.held[seq] = (data, ack if ack is not None else -1, now)
                    h.held_bytes += len(data)
        self._pump(now, force=self.req.held_bytes + self.ans.held_bytes > self.max_held)

    def tick(self, now: float) -> None:
        """Force what has waited longer than ``stall``."""
        if self.closed:
            return
        if self.rst_at is not None and now - self.rst_at >= self.stall:
            self.close(now, "reset")
            return
        old = now - self.stall
        if (self.req.held and self.req.first_held <= old) or (
                self.ans.held and self.ans.first_held <= old):
            self.stalls += 1
            self._pump(now, force=True)

    def close(self, now: float, reason: str = "closed") -> None:
        """The connection ended (``reason``: "closed", "reset", "timeout")."""
        if not self.closed:
            self._pump(now, force=True)
            self.closed = True
            self.sink.close(now, reason)

    # ------------------------------------------------------------ delivery

    def _ready(self, h: Half, other: Half, force: bool) -> Optional[Tuple[int, bytes, int, float]]:
        if not h.held or h.nxt is None:
            return None
        seg = h.held.get(h.nxt)
        if seg is None:
            if not force:
                return None
            start = min(h.held, key=lambda s: seq_diff(s, h.nxt))  # type: ignore[arg-type]
            gap = seq_diff(start, h.nxt)  # type: ignore[arg-type]
            if gap < 0:  # a held segment now behind nxt (overlap): trim it
                data, ack, t = h.held.pop(start)
                h.held_bytes -= len(data)
                data = data[-gap:] if len(data) > -gap else b""
                self.dup_bytes += min(len(data), -gap)
                if data:
                    h.held[h.nxt] = (data, ack, t)  # type: ignore[index]
                    h.held_bytes += len(data)
                return self._ready(h, other, force)
            self.gaps += 1
            self.gap_bytes += gap
            if h is self.req and self.req_base is not None:
                self.req_base = (self.req_base + gap) & M32
            h.nxt = start
            seg = h.held[start]
        data, ack, t = seg
        if not force and ack >= 0 and other.nxt is not None and seq_lt(other.nxt, ack) and not (
                h is self.req and self.req_base is None and self.opened is None):
            # acknowledges bytes the other side has not delivered yet (but the
            # first request of a connection older than the capture does not
            # wait for answers before it: those are not delivered)
            return None
        if h is self.ans and self.answered < 0 and self.opened is None:
            # a connection older than the capture: its first answers may answer
            # requests never seen (their ACK number is not beyond the first
            # request byte delivered); dropped
            if self.req_base is None:
                if not force:
                    return None  # no request delivered yet: wait for one
            elif ack < 0 or not seq_lt(self.req_base, ack):
                del h.held[h.nxt]  # type: ignore[arg-type]
                h.held_bytes -= len(data)
                h.nxt = (h.nxt + len(data)) & M32  # type: ignore[operator]
                self.skipped += 1
                return self._ready(h, other, force)
        return h.nxt, data, ack, t  # type: ignore[return-value]

    def _pump(self, now: float, force: bool = False) -> None:
        req, ans = self.req, self.ans
        sink = self.sink
        while True:
            r = self._ready(req, ans, False)
            a = self._ready(ans, req, False)
            if r is None and a is None:
                if not force:
                    break
                r = self._ready(req, ans, True)
                a = None if r is not None else self._ready(ans, req, True)
                if r is None and a is None:
                    break
            take_req = r is not None and (a is None or r[3] <= a[3])
            h = req if take_req else ans
            seq, data, _ack, t = r if take_req else a  # type: ignore[misc]
            del h.held[seq]
            h.held_bytes -= len(data)
            h.nxt = (seq + len(data)) & M32
            if h.held:
                h.first_held = min(v[2] for v in h.held.values())
            if take_req:
                if t > self.req_floor:
                    self.req_floor = t
                if not self.req_bytes:
                    self.req_base = seq
                self.req_bytes += len(data)
                sink.request_data(data, self.req_floor)
            else:
                sink.answer_data(data, self._ans_time(t))
        if ans.fin_at is not None and ans.nxt is not None and not ans.held and \
                not seq_lt(ans.nxt, ans.fin_at):
            self.closed = True
            sink.close(now, "closed")

    def _ans_time(self, t: float) -> float:
        f = self.ans_floor if self.ans_floor > self.req_floor else self.req_floor
        if t > f:
            f = t
        self.ans_floor = f
        self.answered = f
        return f

    @property
    def held_bytes(self) -> int:
        return self.req.held_bytes + self.ans.held_bytes

