"""A replayed session's fields and the packets it puts on the wire (sans-IO).

:class:`SessionBase` holds the per-session variables (named after RFC 793:
``snd_una``, ``snd_nxt``, ``rcv_nxt``, …) and builds every packet the
simulated client sends: the SYN (captured or fabricated), data segments cut
to the target's MSS, bare control segments, retransmissions.  The behaviour —
which packet goes when — is :class:`pycopy_engine.core.session.Session`.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Optional, Tuple

from ..wire.tcpip import (
    ACK,
    PSH,
    SYN,
    Segment,
    TcpOptions,
    build_ipv4_tcp,
    parse_options,
    seq_diff,
    seq_lt,
    syn_options,
    ts_option,
)
from .session_state import NEW, SessionHost, State

M32 = 0xFFFFFFFF
FAKE_WIN = 65535
FAKE_WSCALE = 7
RTO_MIN = 0.2
RTO_MAX = 3.0
MAX_RETRIES = 8
# A response of another length than online's is over once the target has been
# quiet this long: twice the measured RTT, but never more than QUIET_MAX, so
# that one bad RTT sample cannot slow a whole session down (-R is obeyed as given).
QUIET_MAX = 0.05
# how long a captured FIN/RST waits for response bytes the target never sends
END_WAIT = 1.0


class SessionBase:
    __slots__ = (
        "e", "c", "flow", "copy", "key", "cip", "cport", "tip", "tport", "state", "created",
        "last_clt", "last_resp", "last_req", "rtt", "rtt_ambiguous", "quiet_gap", "syn_at",
        "isn", "fake", "syn_seg", "snd_nxt", "snd_una", "rcv_nxt", "target_isn", "peer_wscale",
        "peer_wnd", "mss", "ts_ok", "ts_recent", "ts_last", "clt_win", "ip_id", "queue", "sent",
        "waiting", "req_ack", "req_base", "online_base", "resp_quiet", "idle_at", "rto_at", "rto",
        "retries", "dupacks", "clt_fin_sent", "target_fin", "rebuild_at", "est_deadline",
        "ended", "sched", "queued_bytes", "requests", "handshakes", "stale_resets",
        "ack_sent", "offer_ws", "offer_ts",
    )

    def __init__(self, engine: SessionHost, flow: tuple, copy: int, key: tuple, now: float) -> None:
        self.e = engine
        self.c = engine.counters
        self.flow = flow
        self.copy = copy
        self.key = key
        self.cip, self.cport, self.tip, self.tport = key
        self.state: State = NEW
        self.created = now
        self.last_clt = now
        self.last_resp = now
        self.last_req: Optional[float] = None
        cfg = engine.cfg
        self.rtt = cfg.rtt or 0.001
        self.rtt_ambiguous = False  # Karn: the online SYN was retransmitted, no RTT sample
        self.quiet_gap = max(2 * self.rtt if cfg.rtt else min(2 * self.rtt, QUIET_MAX),
                             cfg.idle_gap)  # as set_rtt() does
        self.syn_at: Optional[float] = None
        self.isn = 0
        self.fake = False
        self.syn_seg: Optional[Segment] = None
        self.snd_nxt = 0
        self.snd_una = 0
        self.rcv_nxt = 0
        self.target_isn = 0
        self.peer_wscale = 0
        self.peer_wnd = 65535
        self.mss = 1460
        self.ts_ok = False
        self.ts_recent = 0
        self.ts_last = 0
        self.clt_win = FAKE_WIN
        self.ip_id = 0
        self.queue: List[Segment] = []
        self.sent: Deque[Tuple[int, Segment]] = deque()
        self.waiting = False
        self.req_ack = 0
        self.req_base = 0
        self.online_base: Optional[int] = None
        self.resp_quiet = False
        self.idle_at: Optional[float] = None
        self.rto_at: Optional[float] = None
        self.rto = RTO_MIN
        self.retries = 0
        self.dupacks = 0
        self.clt_fin_sent = False
        self.target_fin = False
        self.rebuild_at: Optional[float] = None
        self.est_deadline = now + cfg.est_timeout
        self.ended = False
        self.sched: Optional[float] = None
        self.queued_bytes = 0
        self.requests = 0
        self.handshakes = 0
        self.stale_resets = 0
        self.ack_sent = -1
        self.offer_ws = True
        self.offer_ts = False

    def set_rtt(self, rtt: float) -> None:
        self.rtt = rtt
        cfg = self.e.cfg
        wait = 2 * rtt if cfg.rtt else min(2 * rtt, QUIET_MAX)
        self.quiet_gap = max(wait, cfg.idle_gap)

    def _opts(self, seg: Segment) -> TcpOptions:
        try:
            return parse_options(seg.opts)
        except Exception:
            self.c["drop:bad_opts"] += 1
            return TcpOptions()

    def _next_id(self) -> int:
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        return self.ip_id

    def _syn_packet(self) -> bytes:
        """The captured SYN (addresses rewritten), or a fabricated one."""
        s = self.syn_seg
        if s is not None and not self.fake:
            return build_ipv4_tcp(self.cip, self.tip, self.cport, self.tport, self.isn, 0, SYN,
                                  s.win, s.opts, b"", s.ip_id, s.ttl, s.tos)
        ts = (self.ts_last, 0) if self.ts_last else None
        return build_ipv4_tcp(self.cip, self.tip, self.cport, self.tport, self.isn, 0, SYN,
                              FAKE_WIN, syn_options(self.e.cfg.mss, FAKE_WSCALE, False, ts), b"",
                              self._next_id())

    def _emit_syn(self, now: float) -> None:
        """First SYN of a handshake: register the 4-tuple with intercept, then send."""
        e = self.e
        self.handshakes += 1
        self.snd_nxt = (self.isn + 1) & M32
        self.snd_una = self.isn
        e.client_add(self)
        if self.syn_seg is not None and not self.fake:
            o = self._opts(self.syn_seg)
            self.offer_ws, self.offer_ts = o.wscale is not None, o.ts_val is not None
        else:
            self.offer_ws, self.offer_ts = True, bool(self.ts_last)
        e.emit(self._syn_packet(), self.tip)
        self.c["send_syn"] += 1
        # one SYN retransmission before the establishment deadline
        self.rto_at = now + 1.0
        e.schedule(self)

    def _resend_syn(self, now: float) -> None:
        self.c["syn_retransmit"] += 1
        self.e.emit(self._syn_packet(), self.tip)

    def _ts_opts(self) -> bytes:
        return ts_option(self.ts_last, self.ts_recent) if self.ts_ok else b""

    def _send_data(self, seg: Segment, now: float) -> None:
        e = self.e
        c = self.c
        opts = self._ts_opts()
        maxseg = min(self.mss, e.cfg.mtu - 40) - len(opts)
        win = FAKE_WIN if self.fake else self.clt_win
        payload = seg.payload
        seq = seg.seq
        total = len(payload)
        off = 0
        while off < total:
            piece = payload[off:off + maxseg]
            off += len(piece)
            flags = ACK | (PSH if off >= total else 0)
            ip_id = seg.ip_id if off >= total and not self.fake else self._next_id()
            pkt = build_ipv4_tcp(self.cip, self.tip, self.cport, self.tport, seq, self.rcv_nxt,
                                 flags, win, opts, piece, ip_id, seg.ttl, seg.tos)
            self.ack_sent = self.rcv_nxt
            e.emit(pkt, self.tip)
            c["send_content"] += 1
            c["send_bytes"] += len(piece)
            seq = (seq + len(piece)) & M32
        self.sent.append((seq, seg))
        self.snd_nxt = seq
        if self.rto_at is None:
            self.rto_at = now + self.rto
        e.schedule(self)

    def _send_ctl(self, flags: int, seg: Optional[Segment] = None) -> None:
        """A segment without payload from the client side (ACK, FIN, RST)."""
        ack = self.rcv_nxt if flags & ACK else 0
        if flags & ACK:
            self.ack_sent = ack
        win = FAKE_WIN if (self.fake or seg is None) else self.clt_win
        pkt = build_ipv4_tcp(self.cip, self.tip, self.cport, self.tport, self.snd_nxt, ack, flags,
                             win, self._ts_opts(), b"", self._next_id())
        self.e.emit(pkt, self.tip)

    def send_ack(self) -> None:
        self._send_ctl(ACK)
        self.c["send_ack"] += 1

    def _resend_una(self, now: float) -> None:
        """Resend the captured segment spanning snd_una (from snd_una on)."""
        una = self.snd_una
        for end, seg in self.sent:
            if seq_lt(una, end):
                skip = max(0, seq_diff(una, seg.seq))
                piece = Segment(seg.src, seg.dst, seg.sport, seg.dport, (seg.seq + skip) & M32,
                                seg.ack, seg.flags, seg.win, seg.opts, seg.payload[skip:], None,
                                seg.ip_id, seg.ttl, seg.tos)
                saved = self.snd_nxt
                self._send_data(piece, now)
                self.sent.pop()  # _send_data appended it again
                self.snd_nxt = saved
                self.c["retransmit"] += 1
                return


    # the behaviour (session.py) that the packet and target-side code calls back into

    def _set_state(self, new: State) -> None:
        raise NotImplementedError

    def pump(self, now: float) -> None:
        raise NotImplementedError

    def end(self, now: float, reason: Optional[str], rst: bool = True) -> None:
        raise NotImplementedError

    def _rebuild(self, now: float, reason: str, rst: bool = True) -> None:
        raise NotImplementedError
