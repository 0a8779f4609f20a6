"""The safety brake (issue 12, sans-IO): stop opening sessions to a target
whose answers no longer reach intercept.

When the target's route via the assistant disappears, the target answers the
replayed SYNs straight to the real clients, and intercept reports nothing.
``Brake`` watches every new session's first handshake, per target: a SYN
whose SYN-ACK (or RST) intercept has not reported within ``synack_wait`` (1.5 s:
past the session's SYN retransmission at 1 s) is a failed handshake.  When, within the last ``window`` seconds, at least
``min_failures`` handshakes failed and they are at least ``ratio`` of the
handshakes decided in that window from the first failure on (the successes
before a burst of failures do not dilute it), the target is *braked*: no new session is
opened to it (established ones carry on), the sessions still waiting for
their SYN-ACK are ended (no SYN retransmission leaks more answers), and a
probe SYN is sent from an unused client port after ``probe_interval``,
then at doubling intervals up to ``probe_max``.  The first probe whose SYN-ACK
(or RST: the target's answers reach intercept again) is reported releases
the brake.

``Brake`` is pure bookkeeping (times in, decisions out).  ``EngineBrake``
wires it to an ``Engine`` through five small hooks in ``core/engine.py``
(each marked ``# brake hook``): ``admit`` before a session is opened,
``opened`` for each new session, ``on_record`` for each intercept record,
``next_deadline`` and ``on_timer``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional, Tuple

from ..wire.control import encode_client_add
from ..wire.tcpip import ACK, RST, SYN, build_ipv4_tcp, syn_options
from .session import SYN_SENT

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .mapping import Key, TargetMap

Target = Tuple[bytes, int]
PROBE_PORT_BASE = 61000  # probes use client ports 61000..61999, skipping any in use
PROBE_PORTS = 1000


@dataclass(frozen=True)
class BrakeConfig:
    window: float = 3.0          # --brake-window: seconds of handshakes looked at
    min_failures: int = 5        # --brake-failures: at least this many failed in the window
    ratio: float = 0.8           # --brake-ratio: and at least this share of the decided ones
    # --brake-synack-wait: a SYN-ACK later than this is a failure.  It covers the
    # session's SYN retransmission at 1 s: a target whose accept queue overflows drops
    # SYNs silently, and its answer to the retransmission shows the way back is fine
    synack_wait: float = 1.5
    probe_wait: float = 0.5      # a probe (never retransmitted) unanswered this long failed
    probe_interval: float = 1.0  # first probe after this long, then doubling ...
    probe_max: float = 4.0       # ... up to this (resumption within probe_max + probe_wait)

    def check(self) -> None:
        if not 0 < self.window <= 3600:
            raise ValueError("window must be in (0, 3600] s, not %r" % self.window)
        if self.min_failures < 1:
            raise ValueError("failures must be at least 1, not %r" % self.min_failures)
        if not 0 < self.ratio <= 1:
            raise ValueError("ratio must be in (0, 1], not %r" % self.ratio)
        if not 0 < self.synack_wait < self.window:
            raise ValueError("SYN-ACK wait must be in (0, window), not %r" % self.synack_wait)
        if not 0 < self.probe_interval <= self.probe_max:
            raise ValueError("probe interval must be in (0, probe max]")


def target_name(t: Target) -> str:
    return "%d.%d.%d.%d:%d" % (*t[0], t[1])


class TargetState:
    __slots__ = ("outcomes", "failed", "engaged", "since", "reason", "probe_at", "probe_gap",
                 "probe_key", "probe_sent", "probe_isn", "trips", "probes")

    def __init__(self) -> None:
        # (time decided, failed) of the window's outcomes from its first failure on
        self.outcomes: Deque[Tuple[float, bool]] = deque()
        self.failed = 0  # failures among outcomes
        self.engaged = False
        self.since = 0.0
        self.reason = ""
        self.probe_at: Optional[float] = None  # next probe SYN
        self.probe_gap = 0.0
        self.probe_key: Optional["Key"] = None  # the probe waiting for its answer
        self.probe_sent = 0.0
        self.probe_isn = 0
        self.trips = 0
        self.probes = 0


class Brake:
    """Per-target handshake outcomes over a sliding window; see the module docstring."""

    def __init__(self, cfg: BrakeConfig, enabled: bool = True,
                 on_failure: Optional[Callable[[Target, float], None]] = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.enabled = enabled  # off (--no-brake): outcomes are still counted, never braked
        self.on_failure = on_failure
        self.targets: Dict[Target, TargetState] = {}
        self.pending: "OrderedDict[Key, Tuple[float, Target]]" = OrderedDict()
        self.events: List[Tuple[str, Target, str]] = []  # (kind, target, text) for the log

    def state(self, t: Target) -> TargetState:
        st = self.targets.get(t)
        if st is None:
            st = self.targets[t] = TargetState()
        return st

    def engaged(self, t: Target) -> bool:
        st = self.targets.get(t)
        return st is not None and st.engaged

    def syn_sent(self, key: "Key", now: float) -> None:
        self.pending[key] = (now, (key[2], key[3]))
        self.pending.move_to_end(key)

    def answered(self, key: "Key", now: float) -> None:
        """Intercept reported a SYN-ACK or RST for ``key``: the handshake reached it."""
        entry = self.pending.pop(key, None)
        if entry is not None:
            self._outcome(entry[1], now, False)

    def _outcome(self, t: Target, now: float, failed: bool) -> bool:
        """Record one handshake outcome; True if the target was just braked."""
        st = self.state(t)
        self._prune(st, now)
        if failed or st.outcomes:
            st.outcomes.append((now, failed))
            st.failed += failed
        if failed and self.on_failure is not None:
            self.on_failure(t, now)
        cfg = self.cfg
        if (failed and self.enabled and not st.engaged and st.failed >= cfg.min_failures
                and st.failed >= cfg.ratio * len(st.outcomes)):
            self._engage(t, st, now)
            return True
        return False

    def _prune(self, st: TargetState, now: float) -> None:
        limit = now - self.cfg.window
        q = st.outcomes
        while q and (q[0][0] < limit or not q[0][1]):
            st.failed -= q.popleft()[1]

    def _engage(self, t: Target, st: TargetState, now: float) -> None:
        cfg = self.cfg
        st.engaged = True
        st.since = now
        st.trips += 1
        st.reason = ("%d of %d handshakes in the last %gs got no SYN-ACK from intercept within "
                     "%gs" % (st.failed, len(st.outcomes), cfg.window, cfg.synack_wait))
        st.probe_gap = cfg.probe_interval
        st.probe_at = now + st.probe_gap
        st.probe_key = None
        self.events.append(("engaged", t, st.reason))

    def expire(self, now: float) -> List[Target]:
        """Handshakes past their SYN-ACK wait fail; returns targets braked by them."""
        braked = []
        wait = self.cfg.synack_wait
        pending = self.pending
        while pending:
            key, (sent, t) = next(iter(pending.items()))
            if sent + wait > now:  # the same sum as next_deadline(): no float drift
                break
            del pending[key]
            if self._outcome(t, now, True):
                braked.append(t)
        return braked

    def pending_keys(self, t: Target) -> List["Key"]:
        return [k for k, (_s, tt) in self.pending.items() if tt == t]

    def drop_pending(self, keys: List["Key"]) -> None:
        for k in keys:
            self.pending.pop(k, None)

    # ------------------------------------------------------------ probes

    def probes_due(self, now: float) -> List[Target]:
        """Targets whose probe is due (a probe not answered in time counts as failed)."""
        due = []
        for t, st in self.targets.items():
            if not st.engaged:
                continue
            if st.probe_key is not None and now >= st.probe_sent + self.cfg.probe_wait:
                st.probe_key = None  # unanswered: back off
                st.probe_gap = min(st.probe_gap * 2, self.cfg.probe_max)
                st.probe_at = st.probe_sent + st.probe_gap
            if st.probe_key is None and st.probe_at is not None and now >= st.probe_at:
                due.append(t)
        return due

    def probe_sent(self, t: Target, key: "Key", isn: int, now: float) -> None:
        st = self.state(t)
        st.probe_key = key
        st.probe_sent = now
        st.probe_isn = isn
        st.probes += 1

    def probe_for(self, key: "Key") -> Optional[Target]:
        t = (key[2], key[3])
        st = self.targets.get(t)
        if st is not None and st.engaged and st.probe_key == key:
            return t
        return None

    def release(self, t: Target, now: float) -> None:
        st = self.state(t)
        st.engaged = False
        st.probe_key = None
        st.probe_at = None
        st.outcomes.clear()
        st.failed = 0
        self.events.append(("released", t, "a probe's answer was reported after %.1fs braked"
                            % (now - st.since)))

    def probe_now(self, now: float) -> None:
        """A control link came back: braked targets are probed at once, not after the
        backed-off interval (the lost link, not the route, may have engaged the brake)."""
        for st in self.targets.values():
            if st.engaged and st.probe_key is None:
                st.probe_gap = self.cfg.probe_interval
                st.probe_at = now

    def next_deadline(self) -> Optional[float]:
        d: Optional[float] = None
        if self.pending:
            d = next(iter(self.pending.values()))[0] + self.cfg.synack_wait
        for st in self.targets.values():
            if not st.engaged:
                continue
            w: Optional[float] = st.probe_at
            if st.probe_key is not None:
                w = st.probe_sent + self.cfg.probe_wait
            if w is not None and (d is None or w < d):
                d = w
        return d


class EngineBrake:
    """The brake wired to an engine: the engine calls these from its hooks."""

    def __init__(self, engine: "Engine", cfg: BrakeConfig, enabled: bool = True) -> None:
        self.e = engine
        health = engine.health
        self.brake = Brake(cfg, enabled, health.handshake_failed if health is not None else None)
        self.last_cip: Dict[Target, bytes] = {}
        self._probe_seq = 0
        st = engine.stats
        for m in engine.cfg.maps:
            t = (m.target_ip, m.target_port)
            self.brake.state(t)
            if enabled:
                st.add_gauge("brake_engaged:target=" + target_name(t), self._reader(t))

    def _reader(self, t: Target) -> Callable[[], float]:
        return lambda: 1 if self.brake.engaged(t) else 0

    # ---- hooks
    def admit(self, m: "TargetMap", now: float) -> bool:
        if self.brake.engaged((m.target_ip, m.target_port)):
            self.e.stats.c["drop:brake"] += 1
            return False
        return True

    def opened(self, key: "Key", now: float) -> None:
        self.last_cip[(key[2], key[3])] = key[0]
        self.brake.syn_sent(key, now)

    def on_record(self, key: "Key", flags: int, now: float) -> bool:
        """True when the record answered a probe (the engine then ignores it)."""
        b = self.brake
        if not flags & (SYN | RST):
            # any answer proves the way back, e.g. the challenge ACK of a target's
            # TIME_WAIT socket to our SYN (the session then resets it and retries)
            if key in b.pending:
                b.answered(key, now)
            return False
        t = b.probe_for(key)
        if t is None:
            b.answered(key, now)
            return False
        st = b.state(t)
        if flags & SYN and flags & ACK:  # close the probe's half-open connection
            self._emit_probe_packet(key, (st.probe_isn + 1) & 0xFFFFFFFF, RST)
        b.release(t, now)
        self.e.stats.c["brake_released:target=" + target_name(t)] += 1
        return True

    def next_deadline(self) -> Optional[float]:
        return self.brake.next_deadline()

    def on_timer(self, now: float) -> None:
        b = self.brake
        c = self.e.stats.c
        for t in b.expire(now):
            c["brake_trips:target=" + target_name(t)] += 1
            b.drop_pending(b.pending_keys(t))
            # no SYN retransmission: each would leak one more answer
            for s in [s for s in self.e.sessions.values()
                      if s.state == SYN_SENT and s.tip == t[0] and s.tport == t[1]]:
                s.end(now, "brake")
        for t in b.probes_due(now):
            self._probe(t, now)

    # ---- probes
    def _probe(self, t: Target, now: float) -> None:
        cip = self.last_cip.get(t)
        st = self.brake.state(t)
        if cip is None:  # never saw a session to it: nothing to leak, release at once
            self.brake.release(t, now)
            return
        e = self.e
        key = None
        for _ in range(PROBE_PORTS):
            port = PROBE_PORT_BASE + self._probe_seq % PROBE_PORTS
            self._probe_seq += 1
            k = (cip, port, t[0], t[1])
            if k not in e.sessions and k not in e.time_wait:
                key = k
                break
        if key is None:
            st.probe_at = now + st.probe_gap
            return
        isn = e.rng.getrandbits(32)
        e.ctl_out.append(encode_client_add(*key))
        self._emit_probe_packet(key, isn, SYN)
        self.brake.probe_sent(t, key, isn, now)
        e.stats.c["brake_probes:target=" + target_name(t)] += 1

    def _emit_probe_packet(self, key: "Key", seq: int, flags: int) -> None:
        cip, cport, tip, tport = key
        opts = syn_options(self.e.cfg.mss, 7, False, None) if flags & SYN else b""
        pkt = build_ipv4_tcp(cip, tip, cport, tport, seq, 0, flags, 65535 if flags & SYN else 0,
                             opts, b"", self.e.rng.getrandbits(16))
        self.e.emit(pkt, tip)

    def drain_events(self) -> List[Tuple[str, str, str]]:
        ev = [(kind, target_name(t), text) for kind, t, text in self.brake.events]
        self.brake.events.clear()
        return ev
