"""``-m``: keep tcpcopy's resident memory under a bound by evicting sessions (sans-IO).

The io layer measures the process's resident set size (RSS) and hands it in
with :meth:`MemoryGuard.observe`; it does so on a timer and whenever
:meth:`MemoryGuard.due` says enough sessions were opened (or payload buffered)
since the last measurement, so the cost is not paid per packet.

Freed Python objects are reused by the allocator but seldom returned to the
kernel, so the RSS does not fall after an eviction.  The guard therefore
works as a cap on the number of live sessions: when the RSS reaches the high
mark (``high`` of the bound) *and has grown* since the last time it acted, the
cap is set 20 % below the current number of sessions and the excess is
evicted at once; new sessions then reuse the freed memory, and a session
opened at the cap first evicts a small batch.  The cap is raised again when
the RSS falls well below the high mark.

Which sessions go first (:func:`eviction_rank`): those whose client sent
nothing but a SYN (a SYN flood's tuples), then handshaking or rebuilding ones
and established ones idle for longer than ``recent`` seconds, then
established ones with recent traffic; in each group the longest quiet first.

An evicted session is not resurrected: its flow is remembered (a bounded,
expiring "tombstone") and its later segments are dropped and counted
(``drop:evicted``).  A new SYN with another ISN on that flow is a new
connection and lifts the tombstone.  Copies skipped because no client port
was free (``port_exhausted``) are remembered the same way.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import TYPE_CHECKING, Dict, Iterable, Optional, Tuple

from ..wire.tcpip import ACK, SYN, Segment
from .session_state import ESTABLISHED
from .stats import Stats

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

SHRINK = 0.8        # the cap after the RSS reached the high mark: this share of the sessions
GROWTH = 1.01       # ... but only when the RSS grew by 1 % of the bound since the last shrink
BATCH = 1 / 32      # a session opened at the cap first evicts this share of the cap (at least 1)


def eviction_rank(s: "Session", now: float, recent: float) -> Tuple[int, float]:
    """Smaller ranks are evicted first: (group, time of the last traffic)."""
    last = s.last_clt if s.last_clt > s.last_resp else s.last_resp
    if s.requests == 0 and not s.queue and not s.sent and s.online_base is None:
        group = 0  # nothing from the client beyond its SYN: half-open, SYN-flood tuples
    elif s.state != ESTABLISHED or now - last > recent:
        group = 1  # handshaking, rebuilding, or idle
    else:
        group = 2  # established with recent traffic: the last to go
    return group, last


class MemoryGuard:
    def __init__(self, limit: int, stats: Stats, *, high: float = 0.85,
                 sample_sessions: int = 128, sample_bytes: int = 2 << 20, recent: float = 5.0,
                 tomb_max: int = 16384, tomb_ttl: float = 60.0) -> None:
        self.limit = limit
        self.high = int(limit * high)
        self.stats = stats
        self.sample_sessions = sample_sessions
        self.sample_bytes = sample_bytes
        self.recent = recent
        self.tomb_max = tomb_max
        self.tomb_ttl = tomb_ttl
        self.rss = 0
        self.cap: Optional[int] = None
        self._shrunk_at = 0          # the RSS when the cap was last lowered
        self._opened = 0             # sessions opened since the last measurement
        self._buffered_at = 0        # payload buffered at the last measurement
        self.over_warned = False     # the caller logs once when nothing is left to evict
        # flow -> (forget after, reason, ISN of the ended session)
        self.tombs: "OrderedDict[tuple, Tuple[float, str, int]]" = OrderedDict()
        stats.add_gauge("rss_bytes", lambda: self.rss)
        stats.add_gauge("session_cap", lambda: -1 if self.cap is None else self.cap)
        stats.add_gauge("evicted_tuples", lambda: len(self.tombs))

    # ------------------------------------------------------------ measuring

    def due(self, buffered: int) -> bool:
        """Should the caller measure the RSS now (cheap; call after each batch)?"""
        return (self._opened >= self.sample_sessions
                or buffered - self._buffered_at >= self.sample_bytes)

    def observe(self, rss: int, sessions: Dict[tuple, "Session"], buffered: int,
                now: float) -> int:
        """A fresh RSS measurement; evicts if needed and returns how many went."""
        self.rss = rss
        self._opened = 0
        self._buffered_at = buffered
        n = len(sessions)
        if rss >= self.high:
            if self.cap is None or rss > self._shrunk_at + (GROWTH - 1) * self.limit:
                self._shrunk_at = rss
                self.cap = int(n * SHRINK)
                self.stats.c["memory_pressure"] += 1
                return self.evict(sessions, n - self.cap, now)
            return 0
        if self.cap is not None and rss < self.high * 0.9:
            self.cap = int(self.cap * 1.1) + 16  # memory came back: let sessions grow again
            if self.cap > 2 * n + 1024:
                self.cap = None
        return 0

    def before_open(self, sessions: Dict[tuple, "Session"], now: float) -> None:
        """A session is about to be opened: make room under the cap."""
        self._opened += 1
        cap = self.cap
        if cap is not None and len(sessions) >= cap:
            over = len(sessions) - cap + 1
            self.evict(sessions, max(over, int(cap * BATCH), 1), now)

    # ------------------------------------------------------------ evicting

    def evict(self, sessions: Dict[tuple, "Session"], n: int, now: float) -> int:
        if n <= 0 or not sessions:
            return 0
        recent = self.recent
        victims: Iterable["Session"]
        if n >= len(sessions):
            victims = list(sessions.values())
        else:
            victims = heapq.nsmallest(n, sessions.values(),
                                      key=lambda s: eviction_rank(s, now, recent))
        c = self.stats.c
        count = 0
        for s in victims:
            if s.ended:
                continue
            group, _ = eviction_rank(s, now, recent)
            c["evicted:memory_limit"] += 1
            c["evicted_group:%s" % ("syn_only", "idle", "active")[group]] += 1
            self.bury(s.flow, s.isn, now, "evicted")
            s.end(now, "memory_limit")
            count += 1
        return count

    # ------------------------------------------------------------ tombstones

    def bury(self, flow: tuple, isn: int, now: float, reason: str) -> None:
        tombs = self.tombs
        tombs[flow] = (now + self.tomb_ttl, reason, isn)
        tombs.move_to_end(flow)
        while len(tombs) > self.tomb_max:
            tombs.popitem(last=False)

    def dead(self, flow: tuple, seg: Segment, now: float) -> bool:
        """Is this segment of an evicted (or skipped) flow?  Counts and refreshes it."""
        t = self.tombs.get(flow)
        if t is None:
            return False
        until, reason, isn = t
        if now >= until or (seg.flags & SYN and not seg.flags & ACK and seg.seq != isn):
            del self.tombs[flow]  # expired, or a new connection on that port
            return False
        self.stats.c["drop:" + reason] += 1
        self.tombs[flow] = (now + self.tomb_ttl, reason, isn)
        self.tombs.move_to_end(flow)
        return True

    def expire(self, now: float) -> None:
        tombs = self.tombs
        while tombs:
            flow, (until, _r, _i) = next(iter(tombs.items()))
            if until > now:
                break
            del tombs[flow]
