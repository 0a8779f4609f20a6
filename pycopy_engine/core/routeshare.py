"""intercept ``--workers``: who owns which route, and the messages the
workers exchange about it (sans-IO).

Each worker captures its share of the answers (PACKET_FANOUT by flow) and
owns the tcpcopy links handed to it.  A CLIENT_ADD arrives on the worker
that owns the link; the answers of that session land on whichever worker
the fanout hash picks.  So every worker keeps one :class:`Router` whose
entries route a key either to one of its own links (a ``Peer``) or to
``Remote(worker, link)``:

* a CLIENT_ADD on worker V routes the key to V's link there and is
  broadcast (``ROUTE_ADD key link``); the others route it to ``Remote(V, link)``
  and deliver to V the SYN/RST (and early) records they held for it;
* an answer whose route is ``Remote(V, …)`` is forwarded to V (its 64-byte
  record, batched: one datagram per worker and loop turn); V routes it to
  its link through its own Router, which also keeps V's route fresh;
* a link closing on V (``LINK_DOWN``) and a route expiring on V
  (``ROUTE_DEL``) are broadcast too, so no worker keeps forwarding to a
  route its owner forgot.

A record forwarded to V is never forwarded again: if V no longer has a
route of its own for it, it is dropped and counted
(``drop:forwarded_unroutable``).

The last CLIENT_ADD of a key wins, as in C's intercept, also when two links
on two workers register it within the time a broadcast takes: each ADD
carries the CLOCK_MONOTONIC time of its CLIENT_ADD (one clock for every
process of the host), and a worker that holds a later claim on the key (its
own, or learned; kept :data:`CLAIM_WINDOW` seconds) ignores an earlier one
(``route_add_stale``).  Without the stamps, each worker would end with the
other's registration.

Datagrams: ``type`` (1 byte), ``sender`` (1 byte), then the body.
``ROUTES``: entries of 25 bytes (op, link, client ip, client port, target ip,
target port, stamp as a double), in the order they happened.  ``RECORDS``: 64-byte records.
``LINK``: a tcpcopy link handed over by the acceptor (the socket travels as
SCM_RIGHTS; the body is its name).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Dict, Hashable, List, NamedTuple, Optional, Tuple

from ..errors import ProtocolError
from ..wire.control import RECORD_SIZE
from .router import Key, Router
from .stats import Stats

T_ROUTES, T_RECORDS, T_LINK = 1, 2, 3
OP_ADD, OP_DEL, OP_LINK_DOWN = 1, 2, 3
HEAD = struct.Struct("!BB")
ENTRY = struct.Struct("!BI4sH4sHd")
CLAIM_WINDOW = 2.0  # seconds a key's last registration is remembered for ordering
MAX_WORKERS = 64
MAX_DATAGRAM = 32 * 1024  # bytes of body per datagram (the unix socket's buffer holds several)
_NO_KEY = (b"\0\0\0\0", 0, b"\0\0\0\0", 0)


class Remote(NamedTuple):
    """A route owned by another worker's link."""

    worker: int
    link: int


def _chunks(items: List[bytes], size: int) -> List[bytes]:
    per = max(1, MAX_DATAGRAM // size)
    return [b"".join(items[i:i + per]) for i in range(0, len(items), per)]


def encode_link(sender: int, name: str) -> bytes:
    return HEAD.pack(T_LINK, sender) + name.encode("utf-8", "replace")[:200]


def decode_head(data: bytes) -> Tuple[int, int]:
    """(type, sender) of a datagram; ProtocolError when it is not one of ours."""
    if len(data) < HEAD.size:
        raise ProtocolError("inter-worker datagram of %d bytes" % len(data))
    kind, sender = HEAD.unpack_from(data, 0)
    if kind not in (T_ROUTES, T_RECORDS, T_LINK) or sender >= MAX_WORKERS:
        raise ProtocolError("inter-worker datagram of type %d from worker %d" % (kind, sender))
    return kind, sender


class RouteShare:
    """One worker's side: queue what the others must learn, apply what they sent.

    ``router`` is the worker's Router; local routes are entries whose
    connection is not a :class:`Remote`.  ``rewrite`` is intercept's ``-D``
    (answers to A treated as addressed to B), applied to forwarded records'
    keys as to captured ones.
    """

    def __init__(self, me: int, n: int, router: Router, stats: Optional[Stats] = None,
                 rewrite: Optional[Tuple[bytes, bytes]] = None) -> None:
        if not 0 <= me < n <= MAX_WORKERS:
            raise ValueError("worker %d of %d (at most %d workers)" % (me, n, MAX_WORKERS))
        self.me = me
        self.n = n
        self.router = router
        self.stats = stats or router.stats
        self.rewrite = rewrite
        self._entries: List[bytes] = []  # to broadcast, in order
        self._records: Dict[int, List[bytes]] = {}  # worker -> records to forward
        # key -> (stamp, worker) of its latest registration, the recent ones only
        self._claims: "OrderedDict[Key, Tuple[float, int]]" = OrderedDict()
        self.balancer: Optional[LinkBalancer] = None  # the acceptor's: told of closed links

    # ------------------------------------------------------------ local events

    def local_add(self, key: Key, link: int, now: float) -> None:
        """A CLIENT_ADD on this worker's ``link`` at ``now`` (CLOCK_MONOTONIC,
        already added to the Router)."""
        self._claim(key, now, self.me, force=True)  # the Router has it already
        self._entries.append(ENTRY.pack(OP_ADD, link, *key, now))
        self.stats.c["routes_broadcast"] += 1

    def local_del(self, key: Key, link: int) -> None:
        """This worker forgot ``key`` (expired)."""
        self._entries.append(ENTRY.pack(OP_DEL, link, *key, 0.0))

    def link_down(self, link: int) -> None:
        """This worker's ``link`` closed: its routes go everywhere."""
        self._entries.append(ENTRY.pack(OP_LINK_DOWN, link, *_NO_KEY, 0.0))
        if self.balancer is not None:
            self.balancer.closed(self.me)

    def _claim(self, key: Key, stamp: float, worker: int, force: bool = False) -> bool:
        """Record a registration of ``key``; False when a later one is known
        (ties: the higher worker wins, the same on every worker)."""
        claims = self._claims
        old = claims.get(key)
        if old is not None:
            if old > (stamp, worker) and not force:
                return False
            del claims[key]  # to the end: the dict stays in stamp order (roughly)
        claims[key] = (stamp, worker)
        limit = stamp - CLAIM_WINDOW
        while claims:
            first = next(iter(claims.values()))
            if first[0] >= limit:
                break
            claims.popitem(last=False)
        return True

    def forward(self, worker: int, rec: bytes) -> None:
        """Send a record captured here to the worker that owns its route."""
        q = self._records.get(worker)
        if q is None:
            self._records[worker] = [rec]
        else:
            q.append(rec)

    @property
    def pending(self) -> bool:
        return bool(self._entries or self._records)

    def datagrams(self) -> List[Tuple[int, bytes]]:
        """(worker, datagram) to send now: route changes to every other worker,
        then the records batched per owner.  Empties the queues."""
        out: List[Tuple[int, bytes]] = []
        me = self.me
        if self._entries:
            head = HEAD.pack(T_ROUTES, me)
            bodies = _chunks(self._entries, ENTRY.size)
            self._entries = []
            for w in range(self.n):
                if w != me:
                    out.extend((w, head + b) for b in bodies)
        if self._records:
            head = HEAD.pack(T_RECORDS, me)
            c = self.stats.c
            for w, recs in self._records.items():
                c["records_forwarded"] += len(recs)
                out.extend((w, head + b) for b in _chunks(recs, RECORD_SIZE))
            self._records = {}
        return out

    # ------------------------------------------------------------ from the others

    def receive(self, data: bytes, now: float) -> List[Tuple[Hashable, bytes]]:
        """Apply one datagram from another worker; returns the (connection,
        record) pairs to write to this worker's own links.  ``LINK`` datagrams
        are the caller's (they carry a socket): ProtocolError here."""
        kind, sender = decode_head(data)
        if sender == self.me or sender >= self.n:
            raise ProtocolError("inter-worker datagram from worker %d at worker %d of %d"
                                % (sender, self.me, self.n))
        if kind == T_ROUTES:
            self._routes(sender, data, now)
            return []
        if kind == T_RECORDS:
            return self._deliver(data, now)
        raise ProtocolError("a link handover must carry its socket")

    def _routes(self, sender: int, data: bytes, now: float) -> None:
        body = len(data) - HEAD.size
        if body % ENTRY.size:
            raise ProtocolError("route datagram of %d bytes is not whole entries" % len(data))
        router = self.router
        c = self.stats.c
        for off in range(HEAD.size, len(data), ENTRY.size):
            op, link, cip, cport, tip, tport, stamp = ENTRY.unpack_from(data, off)
            owner = Remote(sender, link)
            if op == OP_ADD:
                key = (cip, cport, tip, tport)
                if not self._claim(key, stamp, sender):
                    c["route_add_stale"] += 1  # a later registration is already here
                    continue
                held = router.add(key, owner, now, counter="routes_learned")
                for rec in held:  # captured here before the route was known
                    self.forward(sender, rec)
            elif op == OP_DEL:
                router.remove((cip, cport, tip, tport), owner)
            elif op == OP_LINK_DOWN:
                c["routes_forgotten"] += router.drop_conn(owner)
                if self.balancer is not None:
                    self.balancer.closed(sender)
            else:
                raise ProtocolError("unknown route operation %d" % op)

    def _deliver(self, data: bytes, now: float) -> List[Tuple[Hashable, bytes]]:
        if (len(data) - HEAD.size) % RECORD_SIZE:
            raise ProtocolError("record datagram of %d bytes is not whole records" % len(data))
        routes = self.router.routes
        rewrite = self.rewrite
        out: List[Tuple[Hashable, bytes]] = []
        lost = 0
        for off in range(HEAD.size, len(data), RECORD_SIZE):
            rec = data[off:off + RECORD_SIZE]
            dst = rec[16:20]
            if rewrite is not None and dst == rewrite[0]:
                dst = rewrite[1]
            entry = routes.get((dst, (rec[22] << 8) | rec[23], rec[12:16], (rec[20] << 8) | rec[21]))
            if entry is None or entry[0].__class__ is Remote:
                lost += 1  # the link closed or the route moved meanwhile: never forwarded twice
                continue
            entry[1] = now
            out.append((entry[0], rec))
        c = self.stats.c
        c["records_from_workers"] += len(out)
        if lost:
            c["drop:forwarded_unroutable"] += lost
        return out


class LinkBalancer:
    """The acceptor's choice of the worker that gets a new tcpcopy link: the
    one with the fewest live links, the next one in turn on a tie, so the
    ``-C`` links of one tcpcopy spread over the workers."""

    def __init__(self, n: int) -> None:
        self.links = [0] * n
        self._next = 0

    def pick(self) -> int:
        n = len(self.links)
        low = min(self.links)
        for i in range(n):
            w = (self._next + i) % n
            if self.links[w] == low:
                self._next = (w + 1) % n
                self.links[w] += 1
                return w
        raise AssertionError("unreachable")

    def closed(self, worker: int) -> None:
        if 0 <= worker < len(self.links) and self.links[worker] > 0:
            self.links[worker] -= 1
