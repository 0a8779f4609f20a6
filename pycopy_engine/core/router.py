"""intercept's routing of response records to tcpcopy connections (sans-IO).

Routes are keyed on the exact (client ip, client port, target ip, target
port) that tcpcopy registered with CLIENT_ADD (the C intercept's key is a
lossy 16-bit hash).  The table is bounded (least recently used first out) and
routes expire after ``route_ttl`` seconds without use.  SYN- and RST-flagged
records that arrive before their CLIENT_ADD wait in a delay table for up to
``delay_ttl`` seconds (30 s as in C) and are delivered when it arrives.

Other records that beat their CLIENT_ADD (C drops them) wait too, but only
``early_ttl`` seconds in a small table of their own: the race is real when
intercept reads a capture batch before the control socket, and the record
that loses it is the target's challenge ACK to a SYN that hit a TIME_WAIT
socket, the one answer the session (and the safety brake) waits for.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, List, Optional, Tuple

from .stats import Stats

Key = Tuple[bytes, int, bytes, int]
SYN_OR_RST = 0x02 | 0x04


class Router:
    def __init__(self, stats: Optional[Stats] = None, route_ttl: float = 1200.0,
                 max_routes: int = 1 << 20, delay_ttl: float = 30.0,
                 max_delayed: int = 1 << 16, early_ttl: float = 1.0,
                 max_early: int = 4096) -> None:
        self.stats = stats or Stats()
        self.route_ttl = route_ttl
        self.max_routes = max_routes
        self.delay_ttl = delay_ttl
        self.max_delayed = max_delayed
        self.early_ttl = early_ttl
        self.max_early = max_early
        # key -> [conn, last_used]; order = least recently refreshed first
        self.routes: "OrderedDict[Key, list]" = OrderedDict()
        self.delayed: "OrderedDict[Key, Tuple[float, List[bytes]]]" = OrderedDict()
        self.n_delayed = 0
        self.early: "OrderedDict[Key, Tuple[float, List[bytes]]]" = OrderedDict()
        self.n_early = 0
        self.stats.add_gauge("routes", lambda: len(self.routes))
        self.stats.add_gauge("delayed_records", lambda: self.n_delayed)
        self.stats.add_gauge("early_records", lambda: self.n_early)

    def add(self, key: Key, conn: Hashable, now: float,
            counter: str = "route_add") -> List[bytes]:
        """CLIENT_ADD: route ``key`` to ``conn``; returns records that were waiting for it.

        ``counter`` names what is counted (intercept's workers count the
        routes they learn from each other apart from their own CLIENT_ADDs)."""
        c = self.stats.c
        c[counter] += 1
        routes = self.routes
        entry = routes.get(key)
        if entry is not None:
            if entry[0] != conn:
                c["route_replaced"] += 1
            entry[0] = conn
            entry[1] = now
            routes.move_to_end(key)
        else:
            routes[key] = [conn, now]
            if len(routes) > self.max_routes:
                routes.popitem(last=False)
                c["route_evicted:table_full"] += 1
        out: List[bytes] = []
        waiting = self.delayed.pop(key, None)
        if waiting is not None:
            self.n_delayed -= len(waiting[1])
            c["delay_sent"] += len(waiting[1])
            out = waiting[1]
        early = self.early.pop(key, None)
        if early is not None:  # after the delayed ones: a SYN-ACK precedes its ACKs
            self.n_early -= len(early[1])
            c["early_sent"] += len(early[1])
            out = out + early[1]
        return out

    def route(self, key: Key, rec: bytes, flags: int, now: float) -> Optional[Hashable]:
        """The connection a response record goes to, or None (delayed or dropped)."""
        entry = self.routes.get(key)
        if entry is not None:
            entry[1] = now
            return entry[0]
        c = self.stats.c
        if flags & SYN_OR_RST:
            if self.n_delayed >= self.max_delayed:
                c["drop:delay_table_full"] += 1
                return None
            slot = self.delayed.get(key)
            if slot is None:
                self.delayed[key] = (now, [rec])
            else:
                slot[1].append(rec)
            self.n_delayed += 1
            c["delayed"] += 1
        elif self.n_early >= self.max_early:
            c["drop:no_route"] += 1
        else:
            slot = self.early.get(key)
            if slot is None:
                self.early[key] = (now, [rec])
            else:
                slot[1].append(rec)
            self.n_early += 1
            c["early"] += 1
        return None

    def remove(self, key: Key, conn: Hashable) -> bool:
        """Forget ``key`` if it still routes to ``conn``."""
        entry = self.routes.get(key)
        if entry is None or entry[0] != conn:
            return False
        del self.routes[key]
        return True

    def drop_conn(self, conn: Hashable) -> int:
        """Forget every route of a closed connection."""
        dead = [k for k, v in self.routes.items() if v[0] == conn]
        for k in dead:
            del self.routes[k]
        return len(dead)

    def expire(self, now: float, routes: bool = True) -> List[Tuple[Key, Hashable]]:
        """Drop expired delayed records, and (a full scan) idle routes when ``routes``;
        returns the (key, connection) of every route that expired."""
        c = self.stats.c
        stale: List[Tuple[Key, Hashable]] = []
        if routes:
            table = self.routes
            limit = now - self.route_ttl
            stale = [(k, v[0]) for k, v in table.items() if v[1] < limit]
            for k, _conn in stale:
                del table[k]
            if stale:
                c["route_expired"] += len(stale)
        n = _expire_held(self.delayed, now - self.delay_ttl)
        self.n_delayed -= n
        c["drop:delay_expired"] += n
        n = _expire_held(self.early, now - self.early_ttl)
        self.n_early -= n
        c["drop:no_route"] += n  # no CLIENT_ADD came: not ours
        return stale


def _expire_held(table: "OrderedDict[Key, Tuple[float, List[bytes]]]", limit: float) -> int:
    """Drop the entries held since before ``limit`` (oldest first); how many records."""
    n = 0
    while table:
        key, (since, recs) = next(iter(table.items()))
        if since >= limit:
            break
        del table[key]
        n += len(recs)
    return n


class Combiner:
    """Per-connection batching of records into combined frames (≤ 16 records).

    Records accumulate while one capture batch is processed and are flushed at
    its end, so the batch size follows the load: one record per frame when
    traffic is light (no added latency), up to 16 under load.
    """

    __slots__ = ("pending", "max_count")

    def __init__(self, max_count: int = 16) -> None:
        self.pending: List[bytes] = []
        self.max_count = max_count

    def add(self, rec: bytes) -> Optional[bytes]:
        p = self.pending
        p.append(rec)
        if len(p) >= self.max_count:
            return self.flush()
        return None

    def flush(self) -> Optional[bytes]:
        p = self.pending
        if not p:
            return None
        frame = len(p).to_bytes(2, "big") + b"".join(p)
        self.pending = []
        return frame

