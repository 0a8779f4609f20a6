"""Replication health per target over a sliding window (issue 12, sans-IO).

Three figures per target, each counted in one-second buckets over the last
``window`` seconds, and as running totals (for Prometheus' ``rate()``):

* requests captured: a captured data segment whose ACK number differs from
  the flow's previous one starts a request (the engine's own rule), counted
  once per copy that replays (or would replay, were the brake not engaged)
  the flow; sampled-out flows (``-r``) and ``-O`` flows without a SYN are
  not counted; with ``--tee``, for each target the flow is copied to;
* requests completed: the target sent the first bytes of the answer to a
  replayed request (reported by intercept);
* handshakes failed: a new session's SYN got no SYN-ACK reported within the
  brake's SYN-ACK wait (counted whether the brake is on or off).

``replication = completed / captured`` over the window (1 when nothing was
captured).  The engine calls ``on_data`` and ``on_response`` from two small
hooks in ``core/engine.py`` (each marked ``# health hook``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .brake import target_name

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .mapping import TargetMap

Target = Tuple[bytes, int]
MAX_FLOWS = 1 << 16  # last ACK numbers remembered for this many recent flows
CAPTURED, COMPLETED, FAILED = 0, 1, 2
NAMES = ("requests_captured", "requests_completed", "handshakes_failed")


class Window:
    """Counts in one-second buckets; ``total(now)`` over the last ``size`` seconds."""

    __slots__ = ("size", "buckets", "base")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buckets: List[List[int]] = [[0, 0, 0] for _ in range(size)]
        self.base = 0  # the second of the newest bucket

    def _roll(self, sec: int) -> None:
        if sec <= self.base:
            return
        gap = min(sec - self.base, self.size)
        for i in range(1, gap + 1):
            b = self.buckets[(self.base + i) % self.size]
            b[0] = b[1] = b[2] = 0
        self.base = sec

    def add(self, what: int, n: int, now: float) -> None:
        sec = int(now)
        self._roll(sec)
        if sec > self.base - self.size:
            self.buckets[sec % self.size][what] += n

    def total(self, now: float) -> List[int]:
        self._roll(int(now))
        out = [0, 0, 0]
        for b in self.buckets:
            out[0] += b[0]
            out[1] += b[1]
            out[2] += b[2]
        return out


class Health:
    def __init__(self, engine: "Engine", window: float = 60.0,
                 clock: Optional[Callable[[], float]] = None) -> None:
        self.e = engine
        self.clock = clock  # read only when figures are asked for (statistics)
        self.window_s = max(1, int(window))
        self.windows: Dict[Target, Window] = {}
        self.keys: Dict[Target, Tuple[str, str, str]] = {}  # the running totals' counter names
        self.last_ack: "OrderedDict[tuple, int]" = OrderedDict()
        self.now = 0.0
        st = engine.stats
        for m in engine.cfg.maps:
            t = (m.target_ip, m.target_port)
            if t in self.windows:
                continue
            self.windows[t] = Window(self.window_s)
            name = target_name(t)
            for i, what in enumerate(NAMES):
                st.add_gauge("health_%s:target=%s" % (what, name), self._reader(t, i))
                st.c["%s:target=%s" % (what, name)] += 0  # the running total exists from start
            st.add_gauge("health_replication:target=" + name, self._reader(t, 3))

    def _reader(self, t: Target, i: int) -> Callable[[], float]:
        return lambda: self.figures(t)[i]

    def _add(self, t: Target, what: int, n: int, now: float) -> None:
        self.now = now
        w = self.windows.get(t)
        if w is None:
            w = self.windows[t] = Window(self.window_s)
        sec = int(now)
        if sec > w.base:
            w._roll(sec)
        if sec > w.base - w.size:
            w.buckets[sec % w.size][what] += n
        keys = self.keys.get(t)
        if keys is None:
            name = target_name(t)
            keys = self.keys[t] = ("%s:target=%s" % (NAMES[0], name),
                                   "%s:target=%s" % (NAMES[1], name),
                                   "%s:target=%s" % (NAMES[2], name))
        self.e.stats.c[keys[what]] += n

    # ---- hooks
    def on_data(self, flow: tuple, m: "TargetMap", seg: Any, sessions: Optional[list],
                now: float) -> None:
        """A captured segment with payload, before the engine handles it."""
        la = self.last_ack
        if la.get(flow) == seg.ack:
            return
        la[flow] = seg.ack
        la.move_to_end(flow)
        if len(la) > MAX_FLOWS:
            la.popitem(last=False)
        e = self.e
        if e.tee is not None:
            self._tee_data(seg, sessions, now)
            return
        if sessions:
            n = len(sessions)
        elif e.brake is not None and e.brake.brake.engaged((m.target_ip, m.target_port)):
            n = e.cfg.replicas
        elif e.cfg.only_syn or not e.sampler.keep(seg.src, seg.sport, now):
            return
        else:
            n = e.cfg.replicas
        self._add((m.target_ip, m.target_port), CAPTURED, n, now)

    def _tee_data(self, seg: Any, sessions: Optional[list], now: float) -> None:
        """--tee: the rule above, for each target the segment is copied to.  A target
        with no live copy in a flow that has some (braked when the session was
        opened, its copies ended, no free port) counts -n copies that will not
        complete: its replication shows the loss."""
        e = self.e
        n = e.cfg.replicas
        sampled: Optional[bool] = None
        for m in e.tee.maps(seg) if e.tee is not None else ():
            t = (m.target_ip, m.target_port)
            if sessions:
                k = sum(1 for s in sessions if s.tip == t[0] and s.tport == t[1]) or n
            elif e.brake is not None and e.brake.brake.engaged(t):
                k = n
            else:
                if sampled is None:
                    sampled = not e.cfg.only_syn and e.sampler.keep(seg.src, seg.sport, now)
                if not sampled:
                    continue
                k = n
            self._add(t, CAPTURED, k, now)

    def on_response(self, s: Any, seg: Any, now: float) -> None:
        """A record with payload for a live session, before the session handles it:
        the first bytes of the answer to the request in flight complete it."""
        if s.waiting and s.rcv_nxt == s.req_base and s.requests and seg.seq == s.rcv_nxt:
            self._add((s.tip, s.tport), COMPLETED, 1, now)

    def handshake_failed(self, t: Target, now: float) -> None:
        self._add(t, FAILED, 1, now)

    # ---- figures
    def figures(self, t: Target, now: Optional[float] = None) -> Tuple[int, int, int, float]:
        w = self.windows[t]
        if now is None:
            now = self.clock() if self.clock is not None else self.now
        cap, done, failed = w.total(now)
        ratio = 1.0 if cap == 0 else min(1.0, done / cap)
        return cap, done, failed, round(ratio, 4)
