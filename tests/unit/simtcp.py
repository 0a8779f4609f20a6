"""In-memory TCP peers for driving the sans-IO engine with a fake clock.

``SimServer`` is a small but honest TCP server: it answers SYNs with SYN-ACKs
(MSS, window scale, timestamps), accepts in-order data only (out-of-order data
gets a duplicate ACK), answers every complete request line with a response,
acknowledges, closes on FIN, and can be told to close after N requests or to
drop packets.  ``SimClient`` talks to a ``SimServer`` playing the online host
and records the packets the online host would capture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from pycopy_engine.wire.control import make_record
from pycopy_engine.wire.tcpip import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    build_ipv4_tcp,
    find_ts,
    parse_ipv4_tcp,
    parse_options,
    syn_options,
    ts_option,
)

M32 = 0xFFFFFFFF


def http_like(req: bytes) -> bytes:
    """Response to one request line ``b"GET <n>\\n"``: n bytes (default 100) of body."""
    parts = req.split()
    n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 100
    return b"R" * n


@dataclass
class Conn:
    peer: Tuple[bytes, int]
    isn: int
    snd_nxt: int
    rcv_nxt: int
    wscale: int = 0
    ts_ok: bool = False
    ts_recent: int = 0
    buf: bytes = b""
    closed: bool = False
    fin_rcvd: bool = False
    requests: int = 0


@dataclass
class SimServer:
    ip: bytes
    port: int
    respond: Callable[[bytes], bytes] = http_like
    mss: int = 1460
    wscale: Optional[int] = 7
    ts: bool = True
    window: int = 65535
    close_after: Optional[int] = None      # close (FIN) after this many requests
    greeting: bytes = b""                  # sent when the handshake completes (server speaks first)
    seed: int = 1
    conns: Dict[Tuple[bytes, int], Conn] = field(default_factory=dict)
    log: List[Tuple[Tuple[bytes, int], bytes]] = field(default_factory=list)
    out: List[bytes] = field(default_factory=list)
    rst_rcvd: int = 0
    bad_checksums: int = 0
    clock: int = 1000

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _opts(self, c: Conn) -> bytes:
        self.clock += 1
        return ts_option(self.clock, c.ts_recent) if c.ts_ok else b""

    def _send(self, c: Conn, flags: int, payload: bytes = b"") -> None:
        opts = self._opts(c)
        pkt = build_ipv4_tcp(self.ip, c.peer[0], self.port, c.peer[1], c.snd_nxt, c.rcv_nxt,
                             flags, self.window >> (c.wscale and 7), opts, payload, 0)
        self.out.append(pkt)
        c.snd_nxt = (c.snd_nxt + len(payload) + (1 if flags & (SYN | FIN) else 0)) & M32

    def receive(self, pkt: bytes) -> None:
        from pycopy_engine.wire.checksum import tcp_checksum

        seg = parse_ipv4_tcp(pkt)
        if tcp_checksum(seg.src, seg.dst, pkt[20:]) != 0:
            self.bad_checksums += 1
            return
        peer = (seg.src, seg.sport)
        c = self.conns.get(peer)
        if seg.flags & RST:
            if c is not None:
                self.rst_rcvd += 1
                del self.conns[peer]
            return
        t = find_ts(seg.opts)
        if seg.flags & SYN:
            if c is not None and c.rcv_nxt == (seg.seq + 1) & M32:
                c.snd_nxt = c.isn
                self._synack(c)
                return
            o = parse_options(seg.opts)
            isn = self.rng.randrange(1 << 32)
            c = Conn(peer, isn, isn, (seg.seq + 1) & M32)
            c.ts_ok = self.ts and o.ts_val is not None
            c.ts_recent = o.ts_val or 0
            c.wscale = self.wscale if (self.wscale is not None and o.wscale is not None) else 0
            self.conns[peer] = c
            self._synack(c)
            return
        if c is None:
            return
        if t is not None:
            c.ts_recent = t[0]
        if self.greeting and c.snd_nxt == (c.isn + 1) & M32 and seg.ack == c.snd_nxt:
            self._send(c, ACK | PSH, self.greeting)
        if seg.plen:
            if seg.seq != c.rcv_nxt:
                self._send(c, ACK)  # duplicate ACK
                return
            c.rcv_nxt = (c.rcv_nxt + seg.plen) & M32
            c.buf += seg.payload
            answered = False
            while b"\n" in c.buf and not c.closed:
                line, c.buf = c.buf.split(b"\n", 1)
                self.log.append((peer, line))
                c.requests += 1
                body = self.respond(line)
                for i in range(0, len(body), self.mss - 12):
                    self._send(c, ACK | PSH, body[i:i + self.mss - 12])
                answered = True
                if self.close_after is not None and c.requests >= self.close_after:
                    self._send(c, FIN | ACK)
                    c.closed = True
            if not answered:
                self._send(c, ACK)
        if seg.flags & FIN and seg.seq + seg.plen == (c.rcv_nxt if not seg.plen else c.rcv_nxt):
            c.rcv_nxt = (c.rcv_nxt + 1) & M32
            c.fin_rcvd = True
            if not c.closed:
                self._send(c, FIN | ACK)
                c.closed = True
            else:
                self._send(c, ACK)

    def _synack(self, c: Conn) -> None:
        opts = syn_options(self.mss, c.wscale if c.wscale else None, True,
                           (self.clock, c.ts_recent) if c.ts_ok else None)
        pkt = build_ipv4_tcp(self.ip, c.peer[0], self.port, c.peer[1], c.isn, c.rcv_nxt,
                             SYN | ACK, self.window, opts, b"", 0)
        self.out.append(pkt)
        c.snd_nxt = (c.isn + 1) & M32

    def take(self) -> List[bytes]:
        out, self.out = self.out, []
        return out


class SimClient:
    """A client talking to a SimServer (the online host); records what online captures."""

    def __init__(self, server: SimServer, ip: bytes, port: int, isn: int = 1000,
                 ts: bool = True, wscale: Optional[int] = 7) -> None:
        self.server = server
        self.ip = ip
        self.port = port
        self.isn = isn
        self.seq = isn
        self.ack = 0
        self.ts = ts
        self.wscale = wscale
        self.tsval = 5000
        self.ts_recent = 0
        self.captured: List[bytes] = []
        self.received = b""
        self.ip_id = 100

    def _send(self, flags: int, payload: bytes = b"", opts: Optional[bytes] = None) -> None:
        self.tsval += 1
        if opts is None:
            opts = ts_option(self.tsval, self.ts_recent) if self.ts else b""
        self.ip_id += 1
        pkt = build_ipv4_tcp(self.ip, self.server.ip, self.port, self.server.port, self.seq,
                             self.ack, flags, 502, opts, payload, self.ip_id)
        self.captured.append(pkt)
        self.seq = (self.seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & M32
        self.server.receive(pkt)
        self._drain()

    def _drain(self) -> None:
        for pkt in self.server.take():
            seg = parse_ipv4_tcp(pkt)
            t = find_ts(seg.opts)
            if t:
                self.ts_recent = t[0]
            if seg.flags & SYN:
                self.ack = (seg.seq + 1) & M32
            elif seg.plen and seg.seq == self.ack:
                self.ack = (self.ack + seg.plen) & M32
                self.received += seg.payload
            if seg.flags & FIN:
                self.ack = (self.ack + 1) & M32

    def connect(self) -> None:
        opts = syn_options(1460, self.wscale, True, (self.tsval, 0) if self.ts else None)
        self._send(SYN, opts=opts)
        self._send(ACK)

    def request(self, line: bytes) -> None:
        self._send(ACK | PSH, line + b"\n")
        self._send(ACK)  # the client's ACK of the response: tcpcopy must drop it

    def close(self) -> None:
        self._send(FIN | ACK)


class Wire:
    """Connects an Engine to a SimServer target with a fake clock and optional loss."""

    def __init__(self, engine, target: SimServer, drop_to_target: Optional[Callable[[bytes], bool]] = None,
                 drop_records: Optional[Callable[[bytes], bool]] = None) -> None:
        self.engine = engine
        self.target = target
        self.now = 0.0
        self.ctl: List[bytes] = []
        self.sent: List[bytes] = []
        self.drop_to_target = drop_to_target
        self.drop_records = drop_records

    def settle(self, max_rounds: int = 1000) -> None:
        """Move packets until nothing is in flight (no time passes)."""
        for _ in range(max_rounds):
            ctl, tx = self.engine.take_output()
            self.ctl += ctl
            recs = []
            for pkt, _dst in tx:
                self.sent.append(pkt)
                if self.drop_to_target and self.drop_to_target(pkt):
                    continue
                self.target.receive(pkt)
            for pkt in self.target.take():
                rec = make_record(pkt)
                if self.drop_records and self.drop_records(rec):
                    continue
                recs.append(rec)
            if not tx and not recs and not ctl:
                return
            for rec in recs:
                self.engine.on_record(rec, self.now)
        raise AssertionError("no quiescence")

    def capture(self, pkt: bytes, dt: float = 0.0001) -> None:
        self.advance(dt)
        self.engine.on_capture(pkt, self.now)
        self.settle()

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while True:
            d = self.engine.next_deadline()
            if d is None or d > end:
                break
            self.now = max(self.now, d)
            self.engine.on_timer(self.now)
            self.settle()
        self.now = end
