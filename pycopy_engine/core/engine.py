"""tcpcopy's session table and dispatcher (sans-IO).

``Engine.on_capture(pkt, now)`` takes a captured IPv4 packet from the online
host, ``Engine.on_record(rec, now)`` a 64-byte response record from
intercept, ``Engine.on_timer(now)`` fires due timers.  Output accumulates in
``ctl_out`` (CLIENT_ADD messages, for every intercept) and ``tx`` (packets for
the raw socket, with their destination), which the io layer drains with
``take_output()``: control messages first, so that intercept knows a session
before its SYN leaves.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import WireError
from ..wire.control import encode_client_add, parse_record
from ..wire.tcpip import ACK, SYN, parse_ipv4_tcp
from .mapping import AddressMapper, Key, Sampler, TargetMap, find_map
from .session import ESTABLISHED, SYN_SENT, Session
from .stats import Stats

if TYPE_CHECKING:  # pragma: no cover
    from .brake import EngineBrake
    from .health import Health

SESSION_OVERHEAD = 3000  # bytes a session costs beyond its buffered payload (measured, rounded up)
TIME_WAIT = 6.0


@dataclass
class EngineConfig:
    maps: Sequence[TargetMap]
    clt_ips: Sequence[bytes] = ()
    localhost_ip: Optional[bytes] = None
    replicas: int = 1              # -n
    port_shift: int = 0            # -f
    sample_percent: int = 100      # -r
    gradual: bool = False          # -g
    only_syn: bool = False         # -O
    no_wait: bool = False          # -W
    mtu: int = 1500                # -M
    mss: int = 1460                # -D
    rtt: float = 0.0               # -R (seconds; 0 = measure)
    session_timeout: float = 600.0  # -t
    keepalive_timeout: float = 720.0  # -k
    mem_limit: int = 2048 << 20    # -m (bytes)
    max_queue: int = 32768         # captured packets queued per session
    est_timeout: float = 3.0
    idle_gap: float = 0.002        # quiet time that ends a response of another length
    max_rebuilds: int = 16
    seed: Optional[int] = None
    extra: Dict[str, object] = field(default_factory=dict)


class Engine:
    def __init__(self, cfg: EngineConfig, stats: Optional[Stats] = None) -> None:
        self.cfg = cfg
        self.stats = stats or Stats()
        self.rng = random.Random(cfg.seed)
        self.mapper = AddressMapper(cfg.clt_ips, cfg.localhost_ip, cfg.port_shift, self.rng)
        self.sampler = Sampler(cfg.sample_percent, cfg.gradual)
        self.flows: Dict[tuple, List[Session]] = {}
        self.sessions: "OrderedDict[Key, Session]" = OrderedDict()
        self.time_wait: "OrderedDict[Key, float]" = OrderedDict()
        self.tx: List[Tuple[bytes, bytes]] = []
        self.ctl_out: List[bytes] = []
        self.buffered = 0
        self.port_salt = 0  # offline rounds: fresh client ports per round
        self.flow_tag = 0  # offline rounds: the same capture file is a new flow each round
        self._heap: List[tuple] = []
        self._tick = itertools.count()
        self._acks: Set[Session] = set()
        self._next_sweep = 0.0
        self.target_ips = {m.target_ip for m in cfg.maps}
        self.brake: Optional["EngineBrake"] = None  # brake hook: set by the cli (issue 12)
        self.health: Optional["Health"] = None  # health hook: set by the cli (issue 12)
        self.stats.add_gauge("sessions_active", lambda: len(self.sessions))
        self.stats.add_gauge("buffered_bytes", lambda: self.buffered)

    # ------------------------------------------------------------ output

    def emit(self, pkt: bytes, dst: bytes) -> None:
        self.tx.append((pkt, dst))
        self.stats.c["send_packets"] += 1

    def client_add(self, s: Session) -> None:
        self.ctl_out.append(encode_client_add(s.cip, s.cport, s.tip, s.tport))
        self.stats.c["client_add"] += 1

    def want_ack(self, s: Session) -> None:
        self._acks.add(s)

    def take_output(self) -> Tuple[List[bytes], List[Tuple[bytes, bytes]]]:
        """(control messages, packets) produced since the last call."""
        if self._acks:
            for s in self._acks:
                # one ACK per session per batch, and none if a packet we sent
                # since already carried this acknowledgement
                if not s.ended and s.state == ESTABLISHED and s.ack_sent != s.rcv_nxt:
                    s.send_ack()
            self._acks.clear()
        ctl, tx = self.ctl_out, self.tx
        self.ctl_out, self.tx = [], []
        return ctl, tx

    # ------------------------------------------------------------ input

    def on_capture(self, pkt, now: float) -> None:
        c = self.stats.c
        c["clt_packets"] += 1
        try:
            seg = parse_ipv4_tcp(pkt)
        except WireError as exc:
            c["drop:" + exc.reason] += 1
            return
        m = find_map(self.cfg.maps, seg.dst, seg.dport)
        if m is None:
            c["drop:no_map"] += 1
            return
        if seg.src == m.target_ip and seg.sport == m.target_port:
            c["drop:from_target"] += 1
            return
        flow = (seg.src, seg.sport, seg.dst, seg.dport, self.flow_tag)
        sessions = self.flows.get(flow)
        if seg.plen and self.health is not None:  # health hook
            self.health.on_data(flow, m, seg, sessions, now)
        flags = seg.flags
        if flags & SYN and not flags & ACK:
            c["syn_cnt"] += 1
            if sessions:
                if sessions[0].isn == seg.seq:
                    c["drop:syn_retransmit"] += 1
                    return
                for s in list(sessions):  # the client reused the port: a new connection
                    s.end(now, "port_reuse")
                sessions = None
            if not self.sampler.keep(seg.src, seg.sport, now):
                c["drop:sampled_out"] += 1
                return
            for s in self._open(flow, seg, m, now):
                s.start_with_syn(seg, now)
            return
        if seg.plen:
            c["clt_content"] += 1
        if sessions is None:
            if not seg.plen:
                c["drop:no_session"] += 1
                return
            if self.cfg.only_syn:
                c["drop:no_syn"] += 1
                return
            if not self.sampler.keep(seg.src, seg.sport, now):
                c["drop:sampled_out"] += 1
                return
            for s in self._open(flow, seg, m, now):
                s.start_fake(seg, now)
                s.on_client(seg, now)
            return
        for s in sessions:
            s.on_client(seg, now)

    def _open(self, flow: tuple, seg, m: TargetMap, now: float) -> List[Session]:
        c = self.stats.c
        if self.brake is not None and not self.brake.admit(m, now):  # brake hook
            return []
        out = []
        self._enforce_memory(now)
        in_use = self._in_use
        for copy in range(self.cfg.replicas):
            key, skipped = self.mapper.allocate(seg.src, seg.sport, copy, m.target_ip,
                                                m.target_port, in_use, self.port_salt)
            if skipped:
                c["port_collision_avoided"] += skipped
            s = Session(self, flow, copy, key, now)
            self.sessions[key] = s
            self.time_wait.pop(key, None)
            out.append(s)
            c["sessions_opened"] += 1
            if self.brake is not None:  # brake hook: its first SYN leaves now
                self.brake.opened(key, now)
        self.flows[flow] = out
        self._enforce_memory(now)
        return [s for s in out if not s.ended]

    def _in_use(self, key: Key) -> bool:
        # Only live sessions block a 4-tuple: the real client reuses ports as
        # soon as its side allows, and a copy must be free to do the same.
        return key in self.sessions

    def on_record(self, rec, now: float) -> None:
        c = self.stats.c
        c["resp"] += 1
        try:
            seg = parse_record(rec)
        except WireError as exc:
            c["drop:record_" + exc.reason] += 1
            return
        key = (seg.dst, seg.dport, seg.src, seg.sport)
        if self.brake is not None and self.brake.on_record(key, seg.flags, now):  # brake hook
            return
        s = self.sessions.get(key)
        if s is None:
            if key in self.time_wait:
                c["resp_after_close"] += 1  # e.g. the ACK of our last FIN
            else:
                c["drop:resp_no_session"] += 1
            return
        if seg.plen and self.health is not None:  # health hook
            self.health.on_response(s, seg, now)
        s.on_response(seg, now)

    # ------------------------------------------------------------ time

    def schedule(self, s: Session) -> None:
        d = s.next_deadline()
        if d is not None and (s.sched is None or d < s.sched):
            s.sched = d
            heapq.heappush(self._heap, (d, next(self._tick), s))

    def next_deadline(self) -> float:
        d = self._next_sweep
        if self._heap and self._heap[0][0] < d:
            d = self._heap[0][0]
        if self.brake is not None:  # brake hook
            bd = self.brake.next_deadline()
            if bd is not None and bd < d:
                d = bd
        return d

    def on_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, _, s = heapq.heappop(heap)
            if s.ended or s.sched != d:
                continue
            s.sched = None
            s.on_timer(now)
            if not s.ended:
                self.schedule(s)
        if self.brake is not None:  # brake hook
            self.brake.on_timer(now)
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Establishment deadline, -t and -k timeouts, time-wait expiry."""
        cfg = self.cfg
        for s in list(self.sessions.values()):
            if s.state != ESTABLISHED:
                if now >= s.est_deadline:
                    s.end(now, "handshake_timeout")
                continue
            quiet = now - s.last_resp
            if quiet >= cfg.session_timeout and (s.queue or s.sent):
                s.end(now, "idle_timeout")
            elif now - max(s.last_resp, s.last_clt) >= cfg.keepalive_timeout:
                s.end(now, "keepalive_timeout")
        tw = self.time_wait
        while tw:
            key, until = next(iter(tw.items()))
            if until > now:
                break
            del tw[key]
        self._enforce_memory(now)

    def memory_estimate(self) -> int:
        return len(self.sessions) * SESSION_OVERHEAD + self.buffered

    def _enforce_memory(self, now: float) -> None:
        limit = self.cfg.mem_limit
        while self.sessions and self.memory_estimate() > limit:
            oldest = next(iter(self.sessions.values()))
            self.stats.c["evicted:memory_limit"] += 1
            oldest.end(now, "memory_limit")

    # ------------------------------------------------------------ ending

    def forget(self, s: Session, now: float) -> None:
        if self.sessions.get(s.key) is s:
            del self.sessions[s.key]
            self.time_wait[s.key] = now + TIME_WAIT
        flow = self.flows.get(s.flow)
        if flow is not None:
            if s in flow:
                flow.remove(s)
            if not flow:
                del self.flows[s.flow]
        self._acks.discard(s)

    def shutdown(self, now: float) -> int:
        """RST the target side of every live session; returns how many."""
        n = 0
        for s in list(self.sessions.values()):
            if s.state in (SYN_SENT, ESTABLISHED):
                n += 1
            s.end(now, "shutdown")
        return n
