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
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ..errors import WireError
from ..wire.control import encode_client_add, parse_record
from ..wire.tcpip import ACK, SYN, parse_ipv4_tcp
from .mapping import AddressMapper, Key, PortExhausted, Sampler, TargetMap, find_map
from .memory import MemoryGuard
from .portpool import PortPool
from .session import Session
from .stats import Stats
from .tee import Tee

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from .brake import EngineBrake
    from .health import Health

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
    # sessions picked up mid-stream: client ports use this per-start salt in
    # place of R (mapping.restart_port_salt; the cli sets it, 0 = none)
    restart_salt: int = 0
    # --tee: a session is copied to every matching -x map (default: the first
    # match only, as in C); target j's copies are -n copies j*n .. j*n+n-1
    tee: bool = False
    # --workers: (index, count); client ports stay in the worker's class
    # (portpool.worker_port) so that workers never pick the same port
    worker: Tuple[int, int] = (0, 1)
    extra: Dict[str, object] = field(default_factory=dict)


class Engine:
    def __init__(self, cfg: EngineConfig, stats: Optional[Stats] = None) -> None:
        self.cfg = cfg
        self.stats = stats or Stats()
        self.counters = self.stats.c  # what sessions count into (SessionHost)
        self.rng = random.Random(cfg.seed)
        self.mapper = AddressMapper(cfg.clt_ips, cfg.localhost_ip, cfg.port_shift, self.rng,
                                    cfg.worker)
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
        self._error_types: Set[str] = set()  # internal errors already logged
        self.target_ips = {m.target_ip for m in cfg.maps}
        self.tee: Optional[Tee] = Tee(self) if cfg.tee else None  # --tee (core/tee.py)
        self.brake: Optional["EngineBrake"] = None  # brake hook: set by the cli (issue 12)
        self.health: Optional["Health"] = None  # health hook: set by the cli (issue 12)
        self.stats.add_gauge("sessions_active", lambda: len(self.sessions))
        self.stats.add_gauge("buffered_bytes", lambda: self.buffered)
        self.memory = MemoryGuard(cfg.mem_limit, self.stats)  # -m (core/memory.py)
        # --no-assistant: client ports come from this pool (core/portpool.py);
        # ``port_busy`` is the io layer's live-socket check
        self.pool: Optional[PortPool] = None
        self.port_busy: Optional[Callable[[int], bool]] = None

    def use_port_pool(self, pool: PortPool, busy: Optional[Callable[[int], bool]] = None) -> None:
        """Own-address mode: every copy's client port is taken from ``pool``."""
        self.pool = pool
        self.port_busy = busy
        self.stats.add_gauge("port_pool_free", lambda: pool.free_count)
        self.stats.add_gauge("port_pool_held", lambda: pool.held_count)
        self.stats.add_gauge("port_pool_busy_skipped", lambda: pool.busy_skipped)

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
                try:
                    s.flush_ack()
                except Exception as exc:
                    self._contain(s, exc, s.last_resp)  # no clock here: its last activity
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
        if sessions is None and self.memory.tombs and self.memory.dead(flow, seg, now):
            return  # -m: an evicted (or port-exhausted) session is not resurrected
        if seg.plen and self.health is not None:  # health hook
            self.health.on_data(flow, m, seg, sessions, now)
        flags = seg.flags
        if flags & SYN and not flags & ACK:
            c["syn_cnt"] += 1
            if sessions:
                if sessions[0].isn == seg.seq:
                    c["drop:syn_retransmit"] += 1
                    for s in sessions:
                        s.note_syn_retransmit()
                    return
                for s in list(sessions):  # the client reused the port: a new connection
                    self._guard(s, now, s.end, now, "port_reuse")
                sessions = None
            if not self.sampler.keep(seg.src, seg.sport, now):
                c["drop:sampled_out"] += 1
                return
            for s in self._open(flow, seg, m, now):
                try:
                    s.start_with_syn(seg, now)
                except Exception as exc:
                    self._contain(s, exc, now)
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
                self._guard(s, now, s.start_fake, seg, now)
                if not s.ended:
                    self._guard(s, now, s.on_client, seg, now)
            return
        for s in tuple(sessions):  # a copy that ends leaves the list: the others still get it
            try:
                s.on_client(seg, now)
            except Exception as exc:
                self._contain(s, exc, now)

    def _open(self, flow: tuple, seg, m: TargetMap, now: float) -> List[Session]:
        c = self.stats.c
        if self.tee is not None:  # every matching target; a braked one is skipped alone
            copies = self.tee.copies(seg, now)
            if not copies:
                return []
        elif self.brake is not None and not self.brake.admit(m, now):  # brake hook
            return []
        else:
            copies = [(m, i, i) for i in range(self.cfg.replicas)]
        out = []
        in_use = self.tee.in_use if self.tee is not None else self._in_use
        # A flow without a captured SYN is older than this process: the
        # previous tcpcopy may still hold its 4-tuple open on the target.
        restart_salt = 0 if seg.flags & SYN else self.cfg.restart_salt
        for m, copy, rep in copies:
            self.memory.before_open(self.sessions, now)  # -m: room under the session cap
            if self.pool is not None:
                slot = self.pool.acquire(now, self.port_busy)
                if slot is None:
                    c["port_pool_exhausted"] += 1  # every pool port is held or resting
                    continue
                key = (slot[0], slot[1], m.target_ip, m.target_port)
            else:
                try:
                    key, skipped = self.mapper.allocate(seg.src, seg.sport, copy, m.target_ip,
                                                        m.target_port, in_use, self.port_salt,
                                                        restart_salt, rep)
                except PortExhausted:
                    c["port_exhausted"] += 1  # every port of that client address is live: skip
                    continue
                if skipped:
                    c["port_collision_avoided"] += skipped
            s = Session(self, flow, copy, key, now)
            self.sessions[key] = s
            self.time_wait.pop(key, None)
            out.append(s)
            c["sessions_opened"] += 1
            if self.brake is not None:  # brake hook: its first SYN leaves now
                self.brake.opened(key, now)
        live = [s for s in out if not s.ended]  # (-m may evict a copy made just before)
        if not live:  # no port, or evicted at once: later segments are dropped, counted
            reason = "evicted" if out else "port_exhausted"  # (pool exhausted too)
            self.memory.bury(flow, seg.seq if seg.flags & SYN else -1, now, reason)
            return live
        self.flows[flow] = live
        return live[:]  # the caller's loop must not skip a copy when another one ends

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
        try:
            s.on_response(seg, now)
        except Exception as exc:
            self._contain(s, exc, now)

    # ------------------------------------------------------------ containment

    def _guard(self, s: Session, now: float, fn: Callable[..., None], *args: object) -> None:
        """Call one session's handler; an exception ends that session only."""
        try:
            fn(*args)
        except Exception as exc:
            self._contain(s, exc, now)

    def _contain(self, s: Session, exc: Exception, now: float) -> None:
        """An unexpected exception in one session: RST its target side, count
        it as ``internal_error``, log the exception's type once; the engine and
        every other session carry on."""
        c = self.counters
        c["sessions_failed:internal_error"] += 1
        c["internal_error:" + type(exc).__name__] += 1
        name = type(exc).__name__
        if name not in self._error_types:
            self._error_types.add(name)
            log.error("internal error in session %s: %s: %s (session reset; logged once per type)",
                      _key_text(s.key), name, exc, exc_info=exc)
        try:
            s.abort(now, "internal_error")
        except Exception:
            c["internal_error:abort_failed"] += 1
            s.ended = True
            self.forget(s, now)
        if s.flow not in self.flows:  # its later segments are dropped, not a fabricated session
            self.memory.bury(s.flow, -1, now, "internal_error")

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
            try:
                s.on_timer(now)
            except Exception as exc:
                self._contain(s, exc, now)
            if not s.ended:
                self.schedule(s)
        if self.brake is not None:  # brake hook
            self.brake.on_timer(now)
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Establishment deadline, -t and -k timeouts, time-wait expiry."""
        for s in list(self.sessions.values()):
            try:
                s.check_timeouts(now)
            except Exception as exc:
                self._contain(s, exc, now)
        tw = self.time_wait
        while tw:
            key, until = next(iter(tw.items()))
            if until > now:
                break
            del tw[key]
        self.memory.expire(now)

    def memory_due(self) -> bool:
        """-m: should the io layer measure the RSS now?  (core/memory.py)"""
        return self.memory.due(self.buffered)

    def observe_rss(self, rss: int, now: float) -> int:
        """-m: a fresh RSS measurement; evicts when near the bound, returns how many."""
        return self.memory.observe(rss, self.sessions, self.buffered, now)

    # ------------------------------------------------------------ ending

    def forget(self, s: Session, now: float) -> None:
        if self.sessions.get(s.key) is s:
            del self.sessions[s.key]
            self.time_wait[s.key] = now + TIME_WAIT
            if self.pool is not None:
                self.pool.release((s.key[0], s.key[1]), now)
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
            if s.target_side_open:
                n += 1
            self._guard(s, now, s.end, now, "shutdown")
        return n

    # ------------------------------------------------------------ for the CLI

    @property
    def active_sessions(self) -> int:
        return len(self.sessions)

    @property
    def time_wait_count(self) -> int:
        return len(self.time_wait)

    def flow_of(self, key: Key) -> Optional[Tuple[tuple, int]]:
        """(captured flow, copy number) of the live session ``key`` (--compare)."""
        s = self.sessions.get(key)
        return None if s is None else (s.flow, s.copy)

    def replicated(self, flow: tuple) -> bool:
        """Does a live session copy this captured flow?  (--compare)"""
        return flow in self.flows

    def registrations(self) -> Iterator[bytes]:
        """A CLIENT_ADD for every live session (a link to intercept came back)."""
        for s in self.sessions.values():
            yield encode_client_add(s.cip, s.cport, s.tip, s.tport)

    def begin_round(self, rnd: int, port_salt: int) -> None:
        """Offline replay: packets that follow belong to round ``rnd`` (a new
        flow for every session), copies get client ports shifted by ``port_salt``."""
        self.flow_tag = rnd
        self.port_salt = port_salt


def _key_text(key: Key) -> str:
    cip, cport, tip, tport = key
    return "%s:%d->%s:%d" % (".".join(map(str, cip)), cport, ".".join(map(str, tip)), tport)
