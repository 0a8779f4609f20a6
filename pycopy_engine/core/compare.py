"""``tcpcopy --compare``: each replicated request with the answer of the online
server and of every target copy (sans-IO; COMPARE.md §2).

The cli feeds four streams, all with its own monotonic clock:

- ``on_online(pkt, now)``: a packet of the online service, either direction,
  from a capture of its own (the kernel's capture times); only flows the
  engine replicates are observed (packets of a flow not known yet are held
  ``orphan_ttl`` seconds, in case its copy starts: the engine reads another
  socket);
- ``on_sent(pkt, now)``: a packet tcpcopy sent to a target (the copy's request
  bytes, its SYN for the path measurement);
- ``on_record(rec, now)`` / ``on_items(items, now)``: the target's answers,
  headers (the 1.0 records) and payloads (the extension, wire/control_ext.py).

One ``Exchange`` (core/answers.py) per connection summarises the answers; the
online connection's summaries and each copy's are joined by request number.
A record is complete once every copy has answered, or ``timeout`` seconds after
its request when a missing answer's connection made no progress for as long
(missing answers are null, with the reason in ``errors``).  Each record is
also counted, per endpoint, target and kind of difference against online,
into the statistics (core/compare_count.py).

Target timings.  A target's answer is timed when tcpcopy receives it from
intercept, the request when tcpcopy sent it, so the raw interval also holds
the path online -> target -> assistant -> online.  The copy's handshake
measures exactly that path (SYN sent by tcpcopy -> SYN-ACK record received,
the target's kernel answering at once); the smallest handshake path of the
target in the last PATH_WINDOW seconds (up to its latest handshake) is
subtracted from every answer time, at the time of the answer: a measured path
is never shorter than the real one (tcpcopy's loop delay only adds to it), so
the smallest is the best estimate, and a keep-alive connection whose own
handshake was slow (a run's start, a burst of new connections) is corrected
by the later, better measurements of other connections.  What remains: the
path's variation above that minimum (queueing), intercept's batching and
tcpcopy's loop delay.  An answer segment is timed by its
header record when that came first (intercept's payload capture is another,
slower socket).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from ..errors import WireError
from ..wire.tcpip import ACK, RST, SYN, ip_str, parse_ipv4_tcp
from .compare_count import DEFAULT_MAX_ENDPOINTS, DiffCounter
from .compare_stream import Pair, seq_lt
from .stats import Stats

DEFAULT_TIMEOUT = 5.0
PATH_WINDOW = 60.0  # s: handshake paths older than this (before the latest) are forgotten
PATH_MAX = 256  # samples kept per target (an ascending run of them; oldest dropped)
SYNACK = SYN | ACK
FIN = 0x01
Key = Tuple[bytes, int, bytes, int]


def _text(ip: bytes, port: int) -> str:
    return "%s:%d" % (ip_str(ip), port)


class Conn:
    """One observed connection: its reassembly and its summariser."""

    __slots__ = ("pair", "ex", "label", "taken", "syn_at", "seen", "start", "pending")

    def __init__(self, pair: Pair, ex: Any, label: str) -> None:
        self.pair = pair
        self.ex = ex
        self.label = label
        self.taken = 0  # summaries taken so far = the next request number
        self.syn_at: Optional[float] = None
        self.seen: Dict[int, float] = {}  # answer segment seq -> its header record's arrival
        self.start: Optional[int] = None  # a copy's first request byte (its SYN's seq + 1)
        self.pending: List[Any] = []  # summaries taken before the flow was aligned

    def first_byte(self) -> Optional[int]:
        return self.start if self.start is not None else self.pair.req_base


class Flow:
    __slots__ = ("text", "conn", "online", "copies", "rows", "last", "oldest", "low", "emitted",
                 "floor", "pend_at")

    def __init__(self, text: str, online: Conn, conn: int = 0) -> None:
        self.text = text
        # the connection's number in this run: a client port reused by a new
        # connection is another flow with the same text, numbering from 0 again
        self.conn = conn
        self.online = online
        self.copies: Dict[Key, Conn] = {}
        # request number -> [since, t, req, proto, {label: answer}]
        self.rows: Dict[int, list] = {}
        self.last = 0.0
        self.oldest = 0.0  # creation time of the oldest row waiting
        # rows written: every n below ``low``, and those in ``emitted``
        self.low = 0
        self.emitted: Set[int] = set()
        # alignment: requests are numbered from the first one every side saw
        # (client byte ``floor``); until it is known (pend_at: since when)
        # summaries wait in their Conn.pending
        self.floor: Optional[int] = None
        self.pend_at: Optional[float] = None


class Comparer:
    def __init__(self, stats: Stats, flow_of: Callable[[Key], Optional[Tuple[tuple, int]]],
                 replicated: Callable[[tuple], bool], *, timeout: float = DEFAULT_TIMEOUT,
                 wall_offset: float = 0.0, exchange: Optional[Callable[[int], Any]] = None,
                 max_flows: int = 20000, max_rows: int = 1024, max_held: int = 256 << 10,
                 idle: float = 120.0, stall: float = 0.5, max_orphans: int = 20000,
                 orphan_ttl: float = 1.0, max_endpoints: int = DEFAULT_MAX_ENDPOINTS) -> None:
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
        self.conns = 0  # connections followed so far (each Flow's number)
        self.copies: Dict[Key, Tuple[Flow, Conn]] = {}
        # target label -> (time, handshake path) of its last PATH_WINDOW
        # seconds, ascending in path (a sliding-window minimum: the first is
        # the smallest; a handshake that queued somewhere says nothing about
        # the path a request takes)
        self.paths: Dict[str, Deque[Tuple[float, float]]] = {}
        self.records: List[dict] = []
        # live differences against online per endpoint, target and kind (metrics)
        self.diffs = DiffCounter(stats, max_endpoints)
        # packets of flows not known yet: key -> [(time, packet)], oldest key first
        self.orphans: Dict[tuple, List[Tuple[float, bytes]]] = {}
        self.orphan_count = 0
        self.max_orphans = max_orphans
        self.orphan_ttl = orphan_ttl
        stats.add_gauge("compare_flows", lambda: len(self.flows))

    def _new_conn(self, port: int, label: str) -> Conn:
        ex = self.exchange(port)
        return Conn(Pair(ex, self.stall, self.max_held), ex, label)

    # ------------------------------------------------------------ online side

    def on_online(self, pkt, now: float) -> None:
        """A packet of the online server's traffic, either direction, in capture order."""
        try:
            seg = parse_ipv4_tcp(pkt)
        except WireError:
            return
        key = (seg.src, seg.sport, seg.dst, seg.dport, 0)
        flows = self.flows
        f = flows.get(key)
        if f is not None:  # from the client
            if seg.flags & SYN and not seg.flags & ACK and f.online.pair.req.nxt is not None \
                    and f.online.pair.req.nxt != (seg.seq + 1) & 0xFFFFFFFF:
                self._end_flow(key, f, now)  # a new connection on the same client port
                f = self._new_flow(key, now)
                if f is None:
                    return
            self._feed(f, False, seg, now)
            return
        f = flows.get((seg.dst, seg.dport, seg.src, seg.sport, 0))
        if f is not None:  # from the server
            self._feed(f, True, seg, now)
            return
        if self.replicated(key):
            f = self._new_flow(key, now)
            if f is not None:
                self._feed(f, False, seg, now)
            return
        # not (yet) known: the engine may not have read this flow's first packet
        # (another socket); held a moment, replayed if a copy of it starts
        orphans = self.orphans
        if self.orphan_count >= self.max_orphans:
            self.c["compare_orphans_dropped"] += 1
            return
        lst = orphans.get(key)
        if lst is None:
            orphans[key] = lst = []
        lst.append((now, pkt if isinstance(pkt, bytes) else bytes(pkt)))
        self.orphan_count += 1

    def _feed(self, f: Flow, answer: bool, seg: Any, now: float) -> None:
        f.last = now
        f.online.pair.segment(answer, seg.seq, seg.ack if seg.flags & ACK else None, seg.flags,
                              seg.payload, now)

    def _new_flow(self, key: tuple, now: float, start: Optional[int] = None) -> Optional[Flow]:
        if len(self.flows) >= self.max_flows:
            self.c["compare_dropped_flows"] += 1
            return None
        self.conns += 1
        f = Flow(_text(key[0], key[1]), self._new_conn(key[3], "online"), self.conns)
        f.last = now
        if start is not None:
            f.online.pair.start_at(start)
        self.flows[key] = f
        held = self.orphans.pop(key, None)
        back = self.orphans.pop((key[2], key[3], key[0], key[1], 0), None)
        if held or back:
            self.orphan_count -= len(held or ()) + len(back or ())
            for t, _d, pkt in sorted([(t, 0, p) for t, p in held or ()]
                                 + [(t, 1, p) for t, p in back or ()], key=lambda e: e[:2]):
                seg = parse_ipv4_tcp(pkt)
                self._feed(f, seg.src != key[0] or seg.sport != key[1], seg, t)
        return f

    def _expire_orphans(self, now: float) -> None:
        orphans = self.orphans
        limit = now - self.orphan_ttl
        while orphans:
            key, lst = next(iter(orphans.items()))
            if lst[-1][0] > limit:
                break
            del orphans[key]
            self.orphan_count -= len(lst)

    # ------------------------------------------------------------ target side

    def on_sent(self, pkt, now: float) -> None:
        ihl = (pkt[0] & 0x0F) << 2
        if not pkt[ihl + 13] & 7 and ((pkt[2] << 8) | pkt[3]) - ihl - ((pkt[ihl + 12] >> 4) << 2) <= 0:
            return  # a pure ACK: nothing to observe
        try:
            seg = parse_ipv4_tcp(pkt)
        except WireError:
            return
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        fc = self.copies.get(key)
        syn = seg.flags & SYN and not seg.flags & ACK
        if fc is None or (syn and fc[1].pair.req.nxt is not None
                          and fc[1].pair.req.nxt != (seg.seq + 1) & 0xFFFFFFFF):
            if not syn and not seg.payload:
                return  # the ACK, FIN or RST of a copy already written out
            info = self.flow_of(key)
            if info is None:
                return
            flow, copy = info
            fkey = flow[:4] + (0,)
            f = self.flows.get(fkey)
            # the copy's first byte is where the online connection's requests
            # are counted from (the copy keeps the client's sequence numbers;
            # a connection older than tcpcopy is copied from the first segment
            # the engine read, and the comparer's capture may have seen more)
            start = (seg.seq + 1) & 0xFFFFFFFF if syn and fc is None and not copy else None
            if f is None:
                f = self._new_flow(fkey, now, start)
                if f is None:
                    return
            elif start is not None and not f.copies:
                f.online.pair.start_at(start)
            # one answer per target "ip:port"; a second copy of the flow to the
            # same target (-n) is "ip:port#k"
            label = _text(seg.dst, seg.dport)
            if any(c.label == label for k, c in f.copies.items() if k != key):
                label += "#%d" % (copy or len(f.copies))
            conn = self._new_conn(seg.dport, label)
            if syn:
                conn.start = (seg.seq + 1) & 0xFFFFFFFF
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
                          seg.payload, now)

    def _answer_time(self, conn: Conn, now: float) -> float:
        samples = self.paths.get(conn.label)
        return now - samples[0][1] if samples else now

    def _add_path(self, label: str, path: float, now: float) -> None:
        samples = self.paths.get(label)
        if samples is None:
            samples = self.paths[label] = deque()
        while samples and samples[-1][1] >= path:
            samples.pop()  # never the minimum again: this one is smaller and newer
        samples.append((now, path))
        while samples[0][0] < now - PATH_WINDOW or len(samples) > PATH_MAX:
            samples.popleft()

    def on_record(self, rec, now: float) -> None:
        """A 1.0 response record: the handshake's path time, FIN and RST."""
        if len(rec) < 40:
            return
        flags = rec[33]
        key = (bytes(rec[16:20]), (rec[22] << 8) | rec[23], bytes(rec[12:16]),
               (rec[20] << 8) | rec[21])
        fc = self.copies.get(key)
        if fc is None:
            return
        conn = fc[1]
        if not flags & (SYN | FIN | RST):
            # a data segment's header comes by the 1.0 path, often before its
            # payload (another capture): the answer is timed by the header
            if ((rec[2] << 8) | rec[3]) > ((rec[0] & 0x0F) << 2) + ((rec[32] >> 4) << 2):
                seen = conn.seen
                if len(seen) >= 1024:
                    seen.clear()
                seen.setdefault(int.from_bytes(rec[24:28], "big"), now)
            return
        if flags & SYNACK == SYNACK:
            if conn.syn_at is not None and fc[0].copies.get(key) is conn:
                self._add_path(conn.label, max(0.0, now - conn.syn_at), now)
                conn.syn_at = None
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
            t = conn.seen.pop(seq, now) if conn.seen else now
            conn.pair.segment(True, seq, ack, flags & ~(SYN | RST), data,
                              self._answer_time(conn, t if t < now else now))

    # ------------------------------------------------------------ records

    def on_timer(self, now: float) -> None:
        """Force stalled streams, join summaries, emit complete and late records."""
        self._expire_orphans(now)
        for key, f in list(self.flows.items()):
            f.online.pair.tick(now)
            got = self._take(f, f.online, now)
            for conn in f.copies.values():
                conn.pair.tick(now)
                got = self._take(f, conn, now) or got
            if f.pend_at is not None and now - f.pend_at >= self.timeout:
                self._align(f, now, True)  # a side that never starts: align without it
            if got or (f.rows and now - f.oldest >= self.timeout):
                self._emit(f, now)
            done = f.online.pair.closed and all(c.pair.closed for c in f.copies.values())
            if (done and not f.rows) or now - f.last > self.idle:
                self._end_flow(key, f, now, "closed" if done else "timeout")

    def _take(self, f: Flow, conn: Conn, now: float) -> bool:
        got = conn.ex.take()
        if not got:
            return False
        if f.floor is None:
            conn.pending.extend(got)
            if f.pend_at is None:
                f.pend_at = now
            self._align(f, now)
        else:
            self._rows(f, conn, got, now)
        return True

    def _align(self, f: Flow, now: float, force: bool = False) -> None:
        """Number the requests of every side from the first one all of them saw.

        The copy keeps the client's sequence numbers, so a request is the same
        client byte on each side.  A connection older than tcpcopy is copied
        from the first request the engine read; the comparer's capture (another
        socket, opened at another time) may have seen earlier or only later
        ones: requests before the latest first byte are not joined (counted as
        ``compare_before_copy``)."""
        if f.floor is not None:
            return
        firsts = [c.first_byte() for c in (f.online, *f.copies.values())]
        if not force and (firsts[0] is None or not any(b is not None for b in firsts[1:])):
            return  # wait for the online side's first request and a copy's
        known = [b for b in firsts if b is not None]
        floor = known[0] if known else -1  # -1: no side saw a request byte (forced)
        for b in known[1:]:
            if seq_lt(floor, b):
                floor = b
        f.floor = floor
        f.pend_at = None
        for conn in (f.online, *f.copies.values()):
            got, conn.pending = conn.pending, []
            if got:
                self._rows(f, conn, got, now)

    def _rows(self, f: Flow, conn: Conn, got: List[Any], now: float) -> None:
        online = conn is f.online
        base = conn.pair.req_base
        floor = f.floor if f.floor is not None else -1
        for s in got:
            if not conn.taken and base is not None and s.off is not None and floor >= 0 and \
                    seq_lt((base + s.off) & 0xFFFFFFFF, floor):
                self.c["compare_before_copy"] += 1  # seen by one side only
                continue
            n = conn.taken
            conn.taken += 1
            t = s.t
            row = f.rows.get(n)
            if row is None:
                if n < f.low or n in f.emitted:  # came after its record was written
                    self.c["compare_late_answers"] += 1
                    continue
                if len(f.rows) >= self.max_rows:
                    self.c["compare_dropped"] += 1
                    continue
                since = min(now, s.t)  # the timeout runs from the request
                row = [since, None, None, None, {}]
                if not f.rows or since < f.oldest:
                    f.oldest = since
                f.rows[n] = row
            j = s.to_json()
            if online or row[2] is None:
                row[2] = j.get("req")
                row[3] = s.proto
            if online:
                row[1] = t
            row[4][conn.label] = j.get("answer")

    def _emit(self, f: Flow, now: float, final: bool = False) -> None:
        if not f.rows:
            return
        conns = [f.online, *f.copies.values()]
        labels = [c.label for c in conns]
        want = len(labels)
        late_before = now - self.timeout
        # a connection still making progress (a copy behind online: tcpcopy
        # replays at the target's pace) is waited for; one that neither got a
        # new request nor answered for ``timeout`` (or is closed) times out
        # (a retransmitted request is no progress)
        busy = {c.label for c in conns if not c.pair.closed and (
            c.pair.answered > late_before or c.pair.req_floor > late_before)}
        oldest = None
        for n in sorted(f.rows):
            row = f.rows[n]
            answers = row[4]
            if not final and len(answers) < want and (
                    row[0] > late_before or any(lb in busy for lb in labels
                                                if lb not in answers)):
                if oldest is None or row[0] < oldest:
                    oldest = row[0]
                continue
            del f.rows[n]
            rec: Dict[str, Any] = {
                "t": round((row[1] if row[1] is not None else row[0]) + self.wall_offset, 6),
                "flow": f.text, "conn": f.conn, "n": n, "proto": row[3], "req": row[2],
                "answers": {lb: answers.get(lb) for lb in labels}}
            missing = [lb for lb in labels if lb not in answers]
            if missing:
                closed = {"online": f.online.pair.closed}
                closed.update((c.label, c.pair.closed) for c in f.copies.values())
                rec["errors"] = {lb: "reset" if closed.get(lb) else "timeout" for lb in missing}
                self.c["compare_timeouts"] += 1
                for lb in missing:
                    self.c["compare_missing:" + ("online" if lb == "online" else "target")] += 1
            self.records.append(rec)
            self.diffs.count(rec)
            self.c["compare_records"] += 1
            f.emitted.add(n)
        while f.low in f.emitted:
            f.emitted.discard(f.low)
            f.low += 1
        if oldest is not None:
            f.oldest = oldest

    def _end_flow(self, key: tuple, f: Flow, now: float, reason: str = "closed") -> None:
        f.online.pair.close(now, reason)
        self._take(f, f.online, now)
        for k, conn in f.copies.items():
            conn.pair.close(now, reason)
            self._take(f, conn, now)
            if self.copies.get(k, (None,))[0] is f:
                del self.copies[k]
        self._align(f, now, True)
        self._emit(f, now, final=True)
        for conn in [f.online, *f.copies.values()]:
            p = conn.pair
            if p.skipped:  # segments of a connection older than its copy, before the copy
                self.c["compare_skipped_before_copy"] += p.skipped
            if p.gaps:
                self.c["compare_gaps"] += p.gaps
                self.c["compare_gap_bytes"] += p.gap_bytes
            if p.stalls:
                self.c["compare_stalls:" + ("online" if conn is f.online else "target")] += p.stalls
        self.flows.pop(key, None)

    def finish(self, now: float) -> None:
        """At exit: every open connection ends, every pending record is written."""
        for key, f in list(self.flows.items()):
            self._end_flow(key, f, now)

    def take_records(self) -> List[dict]:
        out, self.records = self.records, []
        return out
