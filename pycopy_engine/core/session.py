"""One replayed client session towards the target (TCPCopy §3, sans-IO).

The session keeps the online client's own sequence numbers, learns the
target's ISN from the SYN-ACK that intercept reports, rewrites ACK numbers and
timestamps, acknowledges the target's data itself, and paces requests:

* A captured data segment whose ACK number differs from the previous request's
  starts a new request.  Its ACK tells how many response bytes the real client
  had received before sending it; the request is released once the target has
  sent as many bytes for the current response, or once the target's response
  has gone quiet for ``quiet_gap`` (a response of another length), whichever
  comes first.  ``-W`` (no_wait) releases requests as captured.
* Data is held while the target's window is full; unacknowledged data is
  retransmitted on a timer with backoff and after three duplicate ACKs.
* A captured FIN or RST goes once the target has sent as much of the answer
  as the client had received; a RST also waits until the target acknowledged
  all data sent before it, so the target ends where the online server did.
* FIN/RST from the target: the session ends, or is rebuilt (fresh handshake,
  same client address) when captured requests remain.
* Karn's rule: a handshake whose SYN the online client retransmitted gives no
  RTT sample.

States and their transitions: :mod:`pycopy_engine.core.session_state`.
Fields and packet building: :mod:`pycopy_engine.core.session_base`; what
the target's answers do: :mod:`pycopy_engine.core.session_target`.  All
output goes through the owning engine (a ``SessionHost``); time is always
passed in.
"""

from __future__ import annotations

from typing import Optional

from ..wire.tcpip import (
    ACK,
    FIN,
    RST,
    SYN,
    Segment,
    find_ts,
    seq_diff,
    seq_le,
    seq_lt,
)
from .session_base import END_WAIT, M32
from .session_state import (
    CLOSED,
    ESTABLISHED,
    REBUILD_WAIT,
    ROWS,
    SYN_SENT,
    TARGET_SIDE_OPEN,
    State,
    TransitionError,
)
from .session_target import TargetSide


class Session(TargetSide):
    __slots__ = ()

    # ------------------------------------------------------------ state

    def _set_state(self, new: State) -> None:
        """The one place a session changes state: checked against ALLOWED, counted."""
        old = self.state
        key = ROWS[old._value_][new._value_]  # = TRANSITION_KEY[old, new] if allowed
        if key is None:
            self.c["state_error"] += 1
            raise TransitionError(old, new)
        self.c[key] += 1
        self.state = new

    @property
    def target_side_open(self) -> bool:
        return self.state in TARGET_SIDE_OPEN

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
        self._set_state(SYN_SENT)
        self._emit_syn(now)

    def start_fake(self, seg: Segment, now: float) -> None:
        """No SYN was captured (connection older than tcpcopy, or a lost SYN)."""
        self.fake = True
        self.isn = (seg.seq - 1) & M32
        self.ip_id = (seg.ip_id - 2) & 0xFFFF
        t = find_ts(seg.opts)
        self.ts_last = t[0] if t else 0
        self.c["sessions_fake_syn"] += 1
        self._set_state(SYN_SENT)
        self._emit_syn(now)

    def note_syn_retransmit(self) -> None:
        """The online client sent its SYN again: its handshake's RTT is ambiguous."""
        self.rtt_ambiguous = True

    # ------------------------------------------------------------ client side

    def on_client(self, seg: Segment, now: float) -> None:
        c = self.c
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
                    if self.rtt_ambiguous:
                        c["rtt_sample_skipped:syn_retransmitted"] += 1
                    else:
                        self.set_rtt(max(now - self.syn_at, 0.0001))
                if self.state is ESTABLISHED:
                    self._expect_greeting()
            c["drop:pure_ack"] += 1
            return
        if len(self.queue) >= self.e.cfg.max_queue:
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
        self.e.buffered += seg.plen
        if self.target_fin and self.state is ESTABLISHED and seg.plen:
            self._rebuild(now, "target_closed")
            return
        self.pump(now)

    def pump(self, now: float) -> None:
        """Send whatever captured segments may go now."""
        if self.state is not ESTABLISHED:
            return
        c = self.c
        q = self.queue
        no_wait = self.e.cfg.no_wait
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
            if seg.flags & (FIN | RST):
                if self._hold_ending(seg, now):
                    break
                self._pop()
                if seg.flags & RST:
                    self._send_ctl(RST | ACK, seg)
                    c["rst_sent:client_rst"] += 1
                    self.end(now, None, rst=False)
                    return
                self._send_ctl(FIN | ACK, seg)
                self.snd_nxt = (self.snd_nxt + 1) & M32
                self.clt_fin_sent = True
                c["send_fin"] += 1
                if self.target_fin:
                    self.end(now, None)
                    return
                continue
            self._pop()

    def _hold_ending(self, seg: Segment, now: float) -> bool:
        """Must the captured FIN/RST wait?  Until the target sent as much of the
        answer as the client had received (bounded by END_WAIT), and a RST
        until everything sent before it is acknowledged."""
        if seg.flags & RST and self.sent:
            return True  # the ACK (or the retransmission limit) moves it on
        if (self.waiting and not self.e.cfg.no_wait and not self.target_fin
                and not self._response_done(seg)):
            if self.idle_at is None:
                self.idle_at = now + END_WAIT
                self.e.schedule(self)
            return True
        return False

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
            self._set_state(SYN_SENT)
            self._emit_syn(now)
            self.c["reconnect"] += 1
        if self.rto_at is not None and self.rto_at <= now:
            self.rto_at = None
            if self.state is SYN_SENT:
                self._resend_syn(now)
            elif self.state is ESTABLISHED and self.sent:
                self._retransmit(now)
        if self.idle_at is not None and self.idle_at <= now:
            self.idle_at = None
            q = self.queue
            if self.waiting and (seq_diff(self.rcv_nxt, self.req_base) > 0
                                 or (q and q[0].flags & (FIN | RST) and not q[0].plen)):
                self.resp_quiet = True
                self.pump(now)

    def check_timeouts(self, now: float) -> None:
        """The once-a-second sweep: establishment deadline, -t and -k."""
        if self.state is not ESTABLISHED:
            if now >= self.est_deadline:
                self.end(now, "handshake_timeout")
            return
        cfg = self.e.cfg
        if now - self.last_resp >= cfg.session_timeout and (self.queue or self.sent):
            self.end(now, "idle_timeout")
        elif now - max(self.last_resp, self.last_clt) >= cfg.keepalive_timeout:
            self.end(now, "keepalive_timeout")

    # ------------------------------------------------------------ ending

    def _rebuild(self, now: float, reason: str, rst: bool = True) -> None:
        """The target closed while captured requests remain: reconnect and go on."""
        e = self.e
        if self.handshakes > e.cfg.max_rebuilds:
            self.end(now, "rebuild_limit")
            return
        if rst and self.state is ESTABLISHED:
            self._send_ctl(RST | ACK)
            self.c["rst_sent:rebuild"] += 1
        self.c["rebuild:" + reason] += 1
        first = self.queue[0] if self.queue else None
        if first is None:
            self.end(now, None, rst=False)
            return
        self._set_state(REBUILD_WAIT)
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
        c = self.c
        if reason is not None:
            c["sessions_failed:" + reason] += 1
            if rst and self.state in TARGET_SIDE_OPEN:
                self._send_ctl(RST | ACK)
                c["rst_sent:" + reason] += 1
        else:
            c["sessions_closed"] += 1
        self._set_state(CLOSED)
        self.ended = True  # _release(), inlined: once per session on the hot path
        e = self.e
        e.buffered -= self.queued_bytes
        self.queued_bytes = 0
        self.queue = []
        self.sent.clear()
        e.forget(self, now)

    def abort(self, now: float, reason: str) -> None:
        """End after an internal error, trusting as little of the session as
        possible: RST the target at our snd_nxt, drop everything, no checks."""
        if self.ended:
            return
        try:
            if self.state in TARGET_SIDE_OPEN:
                self._send_ctl(RST | ACK)
                self.c["rst_sent:" + reason] += 1
        finally:
            self._set_state(CLOSED)  # allowed from every state but CLOSED itself
            self._release(now)

    def _release(self, now: float) -> None:
        self.ended = True
        self.e.buffered -= self.queued_bytes
        self.queued_bytes = 0
        self.queue = []
        self.sent.clear()
        self.e.forget(self, now)
