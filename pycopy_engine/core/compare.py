"""``tcpcopy --compare``: each replicated request with the answer of the online
server and of every target copy (sans-IO; COMPARE.md §2).

The cli feeds four streams, all with its own monotonic clock:

- ``on_client(pkt, now)``: a captured client packet (after the engine saw it);
  only flows the engine replicates are observed;
- ``on_server(pkt, now)``: an answer of the online server (the second capture);
- ``on_sent(pkt, now)``: a packet tcpcopy sent to a target (the copy's request
  bytes, its SYN for the path measurement);
- ``on_record(rec, now)`` / ``on_items(items, now)``: the target's answers,
  headers (the 1.0 records) and payloads (the extension, wire/control_ext.py).

One ``Exchange`` (core/answers.py) per connection summarises the answers; the
online connection's summaries and each copy's are joined by request number.
A record is complete once every copy has answered, or after ``timeout``
seconds (missing answers are null, with the reason in ``errors``).

Target timings.  A target's answer is timed when tcpcopy receives it from
intercept, the request when tcpcopy sent it, so the raw interval also holds
the path online -> target -> assistant -> online.  The copy's handshake
measures exactly that path (SYN sent by tcpcopy -> SYN-ACK record received,
the target's kernel answering at once), and it is subtracted from every
answer time of that copy (the last one measured for that target when the copy
has none).  What remains: the path's jitter between handshake and request,
intercept's batching, and the difference between intercept's header capture
and its payload capture (both under a millisecond on a LAN).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import WireError
from ..wire.tcpip import ACK, RST, SYN, parse_ipv4_tcp
from .compare_stream import Pair
from .stats import Stats

DEFAULT_TIMEOUT = 5.0
SYNACK = SYN | ACK
FIN = 0x01
Key = Tuple[bytes, int, bytes, int]


def _text(ip: bytes, port: int) -> str:
    return "%s:%d" % (socket.inet_ntoa(ip), port)


class Conn:
    """One observed connection: its reassembly and its summariser."""

    __slots__ = ("pair", "ex", "label", "taken", "syn_at", "path")

    def __init__(self, pair: Pair, ex: Any, label: str) -> None:
        self.pair = pair
        self.ex = ex
        self.label = label
        self.taken = 0  # summaries taken so far = the next request number
        self.syn_at: Optional[float] = None
        self.path: Optional[float] = None  # measured online -> target -> assistant -> online


class Flow:
    __slots__ = ("text", "online", "copies", "rows", "last")

    def __init__(self, text: str, online: Conn) -> None:
        self.text = text
        self.online = online
        self.copies: Dict[Key, Conn] = {}
        # request number -> [since, t, req, proto, {label: answer}]
        self.rows: Dict[int, list] = {}
        self.last = 0.0


class Comparer:
    def __init__(self, stats: Stats, flow_of: Callable[[Key], Optional[Tuple[tuple, int]]],
                 replicated: Callable[[tuple], bool], *, timeout: float = DEFAULT_TIMEOUT,
                 wall_offset: float = 0.0, exchange: Optional[Callable[[int], Any]] = None,
                 max_flows: int = 20000, max_rows: int = 1024, max_held: int = 256 << 10,
                 idle: float = 120.0, stall: float = 0.5) -> None:
        if exchange is None:
            from .answers import Exchange

            exchange = Exchange
        self.exchange = exchange
        self.stats = stats
        self.c = stats.c
        self.flow_of = flow_of
        self.replicated = replicated
        self.timeout = timeout
        self.wall_offset = wall_offset
        self.max_flows = max_flows
        self.max_rows = max_rows
        self.max_held = max_held
        self.idle = idle
        self.stall = stall
        self.flows: Dict[tuple, Flow] = {}
        self.copies: Dict[Key, Tuple[Flow, Conn]] = {}
        self.paths: Dict[str, float] = {}  # target label -> last measured path
        self.records: List[dict] = []
        stats.add_gauge("compare_flows", lambda: len(self.flows))

    def _new_conn(self, port: int, label: str) -> Conn:
        ex = self.exchange(port)
        return Conn(Pair(ex, self.stall, self.max_held), ex, label)

    # ------------------------------------------------------------ online side

    def on_client(self, pkt, now: float) -> None:
        try:
            seg = parse_ipv4_tcp(pkt)
        except WireError:
            return
        key = (seg.src, seg.sport, seg.dst, seg.dport, 0)
        f = self.flows.get(key)
        if f is None or (seg.flags & SYN and not seg.flags & ACK and f.online.pair.req.nxt
                         != (seg.seq + 1) & 0xFFFFFFFF):  # a new connection on the same port
            if f is not None:
                self._end_flow(key, f, now)
            if not self.replicated(key):
                return
            if len(self.flows) >= self.max_flows:
                self.c["compare_dropped_flows"] += 1
                return
            f = Flow(_text(seg.src, seg.sport), self._new_conn(seg.dport, "online"))
            self.flows[key] = f
        f.last = now
        f.online.pair.segment(False, seg.seq, seg.ack if seg.flags & ACK else None, seg.flags,
                              bytes(seg.payload), now)

    def on_server(self, pkt, now: float) -> None:
        try:
            seg = parse_ipv4_tcp(pkt)
        except WireError:
            return
        f = self.flows.get((seg.dst, seg.dport, seg.src, seg.sport, 0))
        if f is None:
            return
        f.last = now
        f.online.pair.segment(True, seg.seq, seg.ack if seg.flags & ACK else None, seg.flags,
                              bytes(seg.payload), now)

    # ------------------------------------------------------------ target side

    def on_sent(self, pkt, now: float) -> None:
        try:
            seg = parse_ipv4_tcp(pkt)
        except WireError:
            return
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        fc = self.copies.get(key)
        syn = seg.flags & SYN and not seg.flags & ACK
        if fc is None or (syn and fc[1].syn_at is not None and fc[1].pair.req.nxt != (seg.seq + 1)
                          & 0xFFFFFFFF):
            info = self.flow_of(key)
            if info is None:
                return
            flow, copy = info
            f = self.flows.get(flow[:4] + (0,))
            if f is None:
                return
            label = _text(seg.dst, seg.dport) + ("#%d" % copy if copy else "")
            conn = self._new_conn(seg.dport, label)
            if fc is not None:  # the session was rebuilt: a new connection, same numbering
                conn.taken = fc[1].taken
                fc[1].pair.close(now)
                self._take(fc[0], fc[1], now)
            f.copies[key] = conn
            fc = (f, conn)
            self.copies[key] = fc
        f, conn = fc
        if syn:
            conn.syn_at = now
        conn.pair.segment(False, seg.seq, seg.ack if seg.flags & ACK else None, seg.flags,
                          bytes(seg.payload), now)

    def _answer_time(self, conn: Conn, now: float) -> float:
        path = conn.path if conn.path is not None else self.paths.get(conn.label, 0.0)
        return now - path

    def on_record(self, rec, now: float) -> None:
        """A 1.0 response record: the handshake's path time, FIN and RST."""
        if len(rec) < 40:
            return
        flags = rec[33]
        if not flags & (SYN | FIN | RST):
            return
        key = (bytes(rec[16:20]), (rec[22] << 8) | rec[23], bytes(rec[12:16]),
               (rec[20] << 8) | rec[21])
        fc = self.copies.get(key)
        if fc is None:
            return
        conn = fc[1]
        if flags & SYNACK == SYNACK:
            if conn.path is None and conn.syn_at is not None:
                conn.path = max(0.0, now - conn.syn_at)
                self.paths[conn.label] = conn.path
        if flags & (FIN | RST):
            seq = int.from_bytes(rec[24:28], "big")
            ack = int.from_bytes(rec[28:32], "big")
            ihl = (rec[0] & 0x0F) << 2
            plen = ((rec[2] << 8) | rec[3]) - ihl - ((rec[32] >> 4) << 2)
            # the FIN's sequence number is after this segment's payload (sent apart)
            conn.pair.segment(True, (seq + max(plen, 0)) & 0xFFFFFFFF if flags & FIN else seq,
                              ack, flags & (FIN | RST), b"", self._answer_time(conn, now))

    def on_items(self, items: List[tuple], now: float) -> None:
        """Answer payloads from intercept (control_ext.EXT_PAYLOAD items)."""
        copies = self.copies
        for cip, cport, tip, tport, seq, ack, flags, data in items:
            fc = copies.get((cip, cport, tip, tport))
            if fc is None:
                self.c["compare_items_unknown"] += 1
                continue
            conn = fc[1]
            fc[0].last = now
            conn.pair.segment(True, seq, ack, flags & ~(SYN | RST), data,
                              self._answer_time(conn, now))

    # ------------------------------------------------------------ records

    def on_timer(self, now: float) -> None:
        """Force stalled streams, join summaries, emit complete and late records."""
        for key, f in list(self.flows.items()):
            f.online.pair.tick(now)
            self._take(f, f.online, now)
            for conn in f.copies.values():
                conn.pair.tick(now)
                self._take(f, conn, now)
            self._emit(f, now)
            done = f.online.pair.closed and all(c.pair.closed for c in f.copies.values())
            if (done and not f.rows) or now - f.last > self.idle:
                self._end_flow(key, f, now)

    def _take(self, f: Flow, conn: Conn, now: float) -> None:
        got = conn.ex.take()
        if not got:
            return
        pair = conn.pair
        online = conn is f.online
        for s in got:
            n = conn.taken
            conn.taken += 1
            t = pair.starts.pop(0) if pair.starts else now
            row = f.rows.get(n)
            if row is None:
                if len(f.rows) >= self.max_rows:
                    self.c["compare_dropped"] += 1
                    continue
                row = [now, None, None, None, {}]
                f.rows[n] = row
            j = s.to_json()
            if online or row[2] is None:
                row[2] = j.get("req")
                proto = getattr(s, "proto", None)
                row[3] = proto if isinstance(proto, str) else (
                    "http" if isinstance(row[2], dict) and "method" in row[2] else "tcp")
            if online:
                row[1] = t
            row[4][conn.label] = j.get("answer")

    def _emit(self, f: Flow, now: float, final: bool = False) -> None:
        if not f.rows:
            return
        labels = ["online"] + [c.label for c in f.copies.values()]
        closed = {"online": f.online.pair.closed}
        closed.update((c.label, c.pair.closed) for c in f.copies.values())
        for n in sorted(f.rows):
            row = f.rows[n]
            answers = row[4]
            late = final or now - row[0] >= self.timeout
            if not late and any(lb not in answers for lb in labels):
                continue
            del f.rows[n]
            rec: Dict[str, Any] = {
                "t": round((row[1] if row[1] is not None else row[0]) + self.wall_offset, 6),
                "flow": f.text, "n": n, "proto": row[3], "req": row[2],
                "answers": {lb: answers.get(lb) for lb in labels}}
            missing = [lb for lb in labels if lb not in answers]
            if missing:
                rec["errors"] = {lb: "reset" if closed.get(lb) else "timeout" for lb in missing}
                self.c["compare_timeouts"] += 1
            self.records.append(rec)
            self.c["compare_records"] += 1

    def _end_flow(self, key: tuple, f: Flow, now: float) -> None:
        f.online.pair.close(now)
        self._take(f, f.online, now)
        for k, conn in f.copies.items():
            conn.pair.close(now)
            self._take(f, conn, now)
            if self.copies.get(k, (None,))[0] is f:
                del self.copies[k]
        self._emit(f, now, final=True)
        for conn in [f.online, *f.copies.values()]:
            p = conn.pair
            if p.gaps:
                self.c["compare_gaps"] += p.gaps
                self.c["compare_gap_bytes"] += p.gap_bytes
        self.flows.pop(key, None)

    def finish(self, now: float) -> None:
        """At exit: every open connection ends, every pending record is written."""
        for key, f in list(self.flows.items()):
            self._end_flow(key, f, now)

    def take_records(self) -> List[dict]:
        out, self.records = self.records, []
        return out
