"""The target side of a replayed session: what intercept's records of the
target's answers do to it (sans-IO).

The SYN-ACK establishes the session; ACKs free sent data and reopen the
window; answer bytes advance ``rcv_nxt`` and arm the quiet-gap timer that ends
a response of another length; a FIN or RST ends or rebuilds the session.  The
client side and the state machine are in :mod:`pycopy_engine.core.session`.
"""

from __future__ import annotations

from ..wire.tcpip import ACK, FIN, RST, SYN, Segment, build_ipv4_tcp, find_ts, seq_le, seq_lt
from .session_base import M32, MAX_RETRIES, RTO_MAX, RTO_MIN, SessionBase
from .session_state import ESTABLISHED, SYN_SENT


class TargetSide(SessionBase):
    __slots__ = ()

    def on_response(self, seg: Segment, now: float) -> None:
        c = self.c
        self.last_resp = now
        flags = seg.flags
        state = self.state
        if state is not ESTABLISHED and state is not SYN_SENT:  # a connection we gave up
            c["drop:resp_while_rebuilding"] += 1
            return
        if flags & RST:
            c["resp_rst"] += 1
            if self.queued_bytes:
                self._rebuild(now, "target_rst", rst=False)
            else:
                self.end(now, None, rst=False)
            return
        if state is SYN_SENT:
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
                self.e.emit(pkt, self.tip)
                self._resend_syn(now)
            else:
                c["drop:resp_not_synack"] += 1
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
            self.e.want_ack(self)
            self.idle_at = now + self.quiet_gap
            self.e.schedule(self)
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
        self.c["conns"] += 1
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
        self._set_state(ESTABLISHED)
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

    def flush_ack(self) -> None:
        """The engine's once-per-batch ACK: only if nothing sent since carried it."""
        if not self.ended and self.state is ESTABLISHED and self.ack_sent != self.rcv_nxt:
            self.send_ack()

    def _retransmit(self, now: float) -> None:
        """Resend the segment at snd_una, with exponential backoff."""
        if self.retries >= MAX_RETRIES:
            self.end(now, "retransmit_limit")
            return
        self._resend_una(now)
        self.retries += 1
        self.rto = min(self.rto * 2, RTO_MAX)
        self.rto_at = now + self.rto
