"""One replayed client session towards the target (TCPCopy §3, sans-IO).

The session keeps the online client's own sequence numbers, learns the
target's ISN from the SYN-ACK that intercept reports, rewrites ACK numbers and
timestamps, acknowledges the target's data itself, and paces requests:

* A captured data segment whose ACK number differs from the previous request's
  starts a new request.  Its ACK tells how many response bytes the real client
  had received before sending it; the request is released once the target has
  sent as many bytes for the current response, or once the target's response
  has gone quiet for ``idle_gap`` (a response of another length), whichever
  comes first.  ``-W`` (no_wait) releases requests as captured.
* Data is held while the target's window is full; unacknowledged data is
  retransmitted on a timer with backoff and after three duplicate ACKs.
* FIN/RST from either side, rebuilding the session (fresh handshake, same
  client address) when the target closes while captured requests remain.

All output goes through the owning ``Engine`` (packets, control messages,
counters); time is always passed in.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Deque, List, Optional, Tuple

from ..wire.tcpip import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Segment,
    build_ipv4_tcp,
    find_ts,
    parse_options,
    seq_diff,
    seq_le,
    seq_lt,
    syn_options,
    ts_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

SYN_SENT, ESTABLISHED, REBUILD_WAIT, CLOSED = 1, 2, 3, 4
STATE_NAMES = {SYN_SENT: "SYN_SENT", ESTABLISHED: "ESTABLISHED", REBUILD_WAIT: "REBUILD_WAIT",
               CLOSED: "CLOSED"}
M32 = 0xFFFFFFFF
FAKE_WIN = 65535
FAKE_WSCALE = 7
RTO_MIN = 0.2
RTO_MAX = 3.0
MAX_RETRIES = 8


class Session:
    __slots__ = (
        "e", "flow", "copy", "key", "cip", "cport", "tip", "tport", "state", "created",
        "last_clt", "last_resp", "last_req", "rtt", "syn_at", "isn", "fake", "syn_seg",
        "snd_nxt", "snd_una", "rcv_nxt", "target_isn", "peer_wscale", "peer_wnd", "mss",
        "ts_ok", "ts_recent", "ts_last", "clt_win", "ip_id", "queue", "sent", "waiting",
        "req_ack", "req_base", "online_base", "resp_quiet", "idle_at", "rto_at", "rto",
        "retries", "dupacks", "clt_fin_sent", "target_fin", "rebuild_at", "est_deadline",
        "ended", "sched", "queued_bytes", "requests", "handshakes", "stale_resets",
        "ack_sent", "offer_ws", "offer_ts",
    )

    def __init__(self, engine: "Engine", flow: tuple, copy: int, key: tuple, now: float) -> None:
        self.e = engine
        self.flow = flow
        self.copy = copy
        self.key = key
        self.cip, self.cport, self.tip, self.tport = key
        self.state = SYN_SENT
        self.created = now
        self.last_clt = now
        self.last_resp = now
        self.last_req: Optional[float] = None
        self.rtt = engine.cfg.rtt if engine.cfg.rtt else 0.001
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
        self.est_deadline = now + engine.cfg.est_timeout
        self.ended = False
        self.sched: Optional[float] = None
        self.queued_bytes = 0
        self.requests = 0
        self.handshakes = 0
        self.stale_resets = 0
        self.ack_sent = -1
        self.offer_ws = True
        self.offer_ts = False

    # ------------------------------------------------------------ start

    def start_with_syn(self, seg: Segment, now: float) -> None:
        """A captured SYN: forward it as captured (addresses rewritten)."""
        self.syn_seg = seg
        self.isn = seg.seq
        self.syn_at = now
        o = self._opts(seg)
        self.ts_last = o.ts_val or 0
        self.clt_win = seg.win
        self.ip_id = seg.ip_id
        self._send_syn(now)

    def start_fake(self, seg: Segment, now: float) -> None:
        """No SYN was captured (connection older than tcpcopy, or a lost SYN)."""
        self.fake = True
        self.isn = (seg.seq - 1) & M32
        self.ip_id = (seg.ip_id - 2) & 0xFFFF
        t = find_ts(seg.opts)
        self.ts_last = t[0] if t else 0
        self.e.stats.c["sessions_fake_syn"] += 1
        self._send_syn(now)

    def _opts(self, seg: Segment):
        try:
            return parse_options(seg.opts)
        except Exception:
            self.e.stats.c["drop:bad_opts"] += 1
            from ..wire.tcpip import TcpOptions

            return TcpOptions()

    def _send_syn(self, now: float) -> None:
        e = self.e
        self.state = SYN_SENT
        self.handshakes += 1
        self.snd_nxt = (self.isn + 1) & M32
        self.snd_una = self.isn
        e.client_add(self)
        if self.syn_seg is not None and not self.fake:
            o = self._opts(self.syn_seg)
            self.offer_ws, self.offer_ts = o.wscale is not None, o.ts_val is not None
        else:
            self.offer_ws, self.offer_ts = True, bool(self.ts_last)
        pkt = self._syn_packet()
        e.emit(pkt, self.tip)
        e.stats.c["send_syn"] += 1
        # one SYN retransmission before the establishment deadline
        self.rto_at = now + 1.0
        e.schedule(self)

    def _next_id(self) -> int:
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        return self.ip_id

    # ------------------------------------------------------------ client side

    def on_client(self, seg: Segment, now: float) -> None:
        e = self.e
        c = e.stats.c
        self.last_clt = now
        flags = seg.flags
        if flags & SYN:
            c["drop:syn_retransmit"] += 1  # a new ISN is handled by the engine
            return
        t = find_ts(seg.opts)
        if t is not None and seq_lt(self.ts_last, t[0]):
            self.ts_last = t[0]
        if not self.fake:
            self.clt_win = seg.win
        if seg.plen == 0 and not flags & (FIN | RST):
            # pure ACK: the handshake's tells where the online server's data starts
            if self.online_base is None and self.syn_at is not None and seg.seq == (self.isn + 1) & M32:
                self.online_base = seg.ack
                if self.e.cfg.rtt == 0:
                    self.rtt = max(now - self.syn_at, 0.0001)
                if self.state == ESTABLISHED:
                    self._expect_greeting()
            c["drop:pure_ack"] += 1
            return
        if len(self.queue) >= e.cfg.max_queue:
            c["drop:too_many_packs"] += 1
            self.end(now, "too_many_packs")
            return
        q = self.queue
        if q and seq_lt(seg.seq, q[-1].seq):
            i = len(q)
            while i and seq_lt(seg.seq, q[i - 1].seq):
                i -= 1
            q.insert(i, seg)
        else:
            q.append(seg)
        self.queued_bytes += seg.plen
        e.buffered += seg.plen
        if self.target_fin and self.state == ESTABLISHED and seg.plen:
            self._rebuild(now, "target_closed")
            return
        self.pump(now)

    def pump(self, now: float) -> None:
        """Send whatever captured segments may go now."""
        if self.state != ESTABLISHED:
            return
        e = self.e
        c = e.stats.c
        q = self.queue
        no_wait = e.cfg.no_wait
        while q:
            seg = q[0]
            plen = seg.plen
            if plen:
                end = (seg.seq + plen) & M32
                if seq_le(end, self.snd_nxt):
                    self._pop()
                    c["clt_retransmit_skipped"] += 1
                    continue
                if seq_lt(self.snd_nxt, seg.seq):
                    if not self.sent and not self.waiting:
                        c["capture_gap"] += 1
                    break  # a segment was lost in capture: wait for it
                new_req = seg.ack != self.req_ack or self.requests == 0
                if new_req and self.waiting and not no_wait and not self._response_done(seg):
                    break
                if seq_lt(seg.seq, self.snd_nxt):  # partly sent before: trim
                    cut = seq_diff(self.snd_nxt, seg.seq)
                    seg = Segment(seg.src, seg.dst, seg.sport, seg.dport, self.snd_nxt, seg.ack,
                                  seg.flags, seg.win, seg.opts, seg.payload[cut:], None,
                                  seg.ip_id, seg.ttl, seg.tos)
                    plen = seg.plen
                room = self.peer_wnd - seq_diff(self.snd_nxt, self.snd_una)
                if room < plen:
                    c["hold:window"] += 1
                    if room <= 0:
                        break
                    # send what fits; the rest stays queued and is trimmed next round
                    seg = Segment(seg.src, seg.dst, seg.sport, seg.dport, seg.seq, seg.ack,
                                  seg.flags & ~FIN, seg.win, seg.opts, seg.payload[:room], None,
                                  seg.ip_id, seg.ttl, seg.tos)
                else:
                    self._pop()
                if new_req:
                    self.req_base = self.rcv_nxt
                    self.req_ack = seg.ack
                    self.requests += 1
                    self.last_req = now
                    self.waiting = True
                    self.resp_quiet = False
                    self.idle_at = None
                    c["requests_sent"] += 1
                self._send_data(seg, now)
                if room < plen:
                    break
                continue
            if seg.flags & FIN:
                if (self.waiting and not no_wait and not self.target_fin
                        and not self._response_done(seg)):
                    break
                self._pop()
                self._send_ctl(FIN | ACK, seg)
                self.snd_nxt = (self.snd_nxt + 1) & M32
                self.clt_fin_sent = True
                c["send_fin"] += 1
                if self.target_fin:
                    self.end(now, None)
                    return
                continue
            if seg.flags & RST:
                if (self.waiting and not no_wait and not self.target_fin
                        and not self._response_done(seg)):
                    break
                self._pop()
                self._send_ctl(RST | ACK, seg)
                c["rst_sent:client_rst"] += 1
                self.end(now, None, rst=False)
                return
            self._pop()

    def _pop(self) -> None:
        seg = self.queue.pop(0)
        self.queued_bytes -= seg.plen
        self.e.buffered -= seg.plen

    def _response_done(self, nxt: Segment) -> bool:
        if self.resp_quiet:
            return True
        need = seq_diff(nxt.ack, self.req_ack)
        have = seq_diff(self.rcv_nxt, self.req_base)
        return have >= need

    def _ts_opts(self) -> bytes:
        return ts_option(self.ts_last, self.ts_recent) if self.ts_ok else b""

    def _send_data(self, seg: Segment, now: float) -> None:
        e = self.e
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
            e.stats.c["send_content"] += 1
            e.stats.c["send_bytes"] += len(piece)
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
        self.e.stats.c["send_ack"] += 1

    # ------------------------------------------------------------ target side

    def on_response(self, seg: Segment, now: float) -> None:
        e = self.e
        c = e.stats.c
        self.last_resp = now
        flags = seg.flags
        if flags & RST:
            c["resp_rst"] += 1
            if self.state == SYN_SENT and self.queued_bytes == 0 and not self.fake:
                self.end(now, None, rst=False)
            elif self.queued_bytes:
                self._rebuild(now, "target_rst", rst=False)
            else:
                self.end(now, None, rst=False)
            return
        if self.state == SYN_SENT:
            if flags & SYN and flags & ACK and seg.ack == (self.isn + 1) & M32:
                self._established(seg, now)
            elif flags & ACK and not flags & SYN and self.handshakes + self.stale_resets < 8:
                # The target still holds an older connection on this 4-tuple
                # (FIN_WAIT/TIME_WAIT) and answered our SYN with an ACK: reset
                # it with seq = its ACK (RFC 793, SYN-SENT) and try again at once.
                self.stale_resets += 1
                c["rst_sent:stale_target_conn"] += 1
                pkt = build_ipv4_tcp(self.cip, self.tip, self.cport, self.tport, seg.ack, 0, RST,
                                     0, b"", b"", self._next_id())
                e.emit(pkt, self.tip)
                self._resend_syn(now)
            else:
                c["drop:resp_not_synack"] += 1
            return
        if self.state != ESTABLISHED:
            c["drop:resp_while_rebuilding"] += 1
            return
        if flags & SYN:  # our handshake ACK was lost: the target repeats its SYN-ACK
            self.send_ack()
            return
        if self.ts_ok:
            t = find_ts(seg.opts)
            if t is not None:
                self.ts_recent = t[0]
        ack = seg.ack
        if seq_lt(self.snd_una, ack):
            if seq_lt(self.snd_nxt, ack):
                c["resp_ack_beyond_sent"] += 1
                ack = self.snd_nxt
            self.snd_una = ack
            sent = self.sent
            while sent and seq_le(sent[0][0], ack):
                sent.popleft()
            self.dupacks = 0
            self.retries = 0
            self.rto = max(RTO_MIN, 4 * self.rtt)
            self.rto_at = now + self.rto if sent else None
        elif ack == self.snd_una and not seg.plen and not flags & FIN and self.sent:
            self.dupacks += 1
            if self.dupacks == 3:
                c["fast_retransmit"] += 1
                self._retransmit(now)
        self.peer_wnd = seg.win << self.peer_wscale
        if seg.plen:
            c["resp_content"] += 1
            c["resp_bytes"] += seg.plen
            end = (seg.seq + seg.plen) & M32
            if seq_lt(self.rcv_nxt, end):
                self.rcv_nxt = end
            e.want_ack(self)
            self.idle_at = now + max(2 * self.rtt, e.cfg.idle_gap)
            e.schedule(self)
        if flags & FIN:
            c["resp_fin"] += 1
            fin_seq = (seg.seq + seg.plen + 1) & M32
            if seq_lt(self.rcv_nxt, fin_seq):
                self.rcv_nxt = fin_seq
            self.target_fin = True
            self.send_ack()
            if self.clt_fin_sent:
                self.end(now, None, rst=False)
                return
            if self.queued_bytes:
                self._rebuild(now, "target_closed")
                return
        self.pump(now)

    def _established(self, seg: Segment, now: float) -> None:
        e = self.e
        e.stats.c["conns"] += 1
        o = self._opts(seg)
        self.target_isn = seg.seq
        self.rcv_nxt = (seg.seq + 1) & M32
        self.snd_una = seg.ack
        self.snd_nxt = seg.ack
        self.peer_wscale = o.wscale if (o.wscale is not None and self.offer_ws) else 0
        self.peer_wnd = seg.win  # a SYN-ACK's window is never scaled
        if o.mss:
            self.mss = o.mss
        self.ts_ok = o.ts_val is not None and self.offer_ts
        if self.ts_ok:
            self.ts_recent = o.ts_val  # type: ignore[assignment]
        self.state = ESTABLISHED
        if self.online_base is not None:
            self._expect_greeting()
        self.rto_at = None
        self.rto = max(RTO_MIN, 4 * self.rtt)
        self.retries = 0
        self.pump(now)
        if not self.ended and self.ack_sent != self.rcv_nxt:
            # nothing queued could go: complete the handshake with a bare ACK
            # (otherwise the first data segment carried the ACK: one packet less)
            self.send_ack()

    def _expect_greeting(self) -> None:
        """Server-speaks-first protocols: the first request waits for as much
        greeting as the online server had sent before it (none for HTTP)."""
        if self.requests == 0 and not self.waiting:
            self.waiting = True
            self.req_ack = self.online_base  # type: ignore[assignment]
            self.req_base = (self.target_isn + 1) & M32
            self.resp_quiet = False

    # ------------------------------------------------------------ timers

    def next_deadline(self) -> Optional[float]:
        d = None
        for t in (self.rto_at, self.idle_at, self.rebuild_at):
            if t is not None and (d is None or t < d):
                d = t
        return d

    def on_timer(self, now: float) -> None:
        if self.rebuild_at is not None and self.rebuild_at <= now:
            self.rebuild_at = None
            self._send_syn(now)
            self.e.stats.c["reconnect"] += 1
        if self.rto_at is not None and self.rto_at <= now:
            self.rto_at = None
            if self.state == SYN_SENT:
                self._resend_syn(now)
            elif self.state == ESTABLISHED and self.sent:
                self._retransmit(now)
        if self.idle_at is not None and self.idle_at <= now:
            self.idle_at = None
            if self.waiting and seq_diff(self.rcv_nxt, self.req_base) > 0:
                self.resp_quiet = True
                self.pump(now)

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

    def _resend_syn(self, now: float) -> None:
        self.e.stats.c["syn_retransmit"] += 1
        self.e.emit(self._syn_packet(), self.tip)

    def _retransmit(self, now: float) -> None:
        """Resend the segment at snd_una (the one spanning it)."""
        e = self.e
        if self.retries >= MAX_RETRIES:
            self.end(now, "retransmit_limit")
            return
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
                e.stats.c["retransmit"] += 1
                break
        self.retries += 1
        self.rto = min(self.rto * 2, RTO_MAX)
        self.rto_at = now + self.rto

    # ------------------------------------------------------------ ending

    def _rebuild(self, now: float, reason: str, rst: bool = True) -> None:
        """The target closed while captured requests remain: reconnect and go on."""
        e = self.e
        if self.handshakes > e.cfg.max_rebuilds:
            self.end(now, "rebuild_limit")
            return
        if rst and self.state == ESTABLISHED:
            self._send_ctl(RST | ACK)
            e.stats.c["rst_sent:rebuild"] += 1
        e.stats.c["rebuild:" + reason] += 1
        first = self.queue[0] if self.queue else None
        if first is None:
            self.end(now, None, rst=False)
            return
        self.state = REBUILD_WAIT
        self.fake = True
        self.syn_seg = None
        self.isn = (first.seq - 1) & M32
        self.sent.clear()
        self.waiting = False
        self.resp_quiet = False
        self.requests = 0
        self.online_base = first.ack
        self.target_fin = False
        self.clt_fin_sent = False
        self.rto_at = None
        self.idle_at = None
        self.est_deadline = now + e.cfg.est_timeout + self.rtt
        self.rebuild_at = now + self.rtt
        e.schedule(self)

    def end(self, now: float, reason: Optional[str], rst: bool = True) -> None:
        """End the session; a RST goes to the target unless it ended cleanly."""
        if self.ended:
            return
        e = self.e
        if reason is not None:
            e.stats.c["sessions_failed:" + reason] += 1
            if rst and self.state in (SYN_SENT, ESTABLISHED):
                self._send_ctl(RST | ACK)
                e.stats.c["rst_sent:" + reason] += 1
        else:
            e.stats.c["sessions_closed"] += 1
        self.state = CLOSED
        self.ended = True
        e.buffered -= self.queued_bytes
        self.queued_bytes = 0
        self.queue = []
        self.sent.clear()
        e.forget(self, now)
