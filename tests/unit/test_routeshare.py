"""intercept --workers: route ownership across workers and their messages (sans-IO).

The workers are simulated in memory: each has its Router and RouteShare, the
datagrams travel in per-(sender, receiver) FIFOs as on the unix sockets, and
the tests decide when each is delivered."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any, Deque, Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycopy_engine.core.router import Router
from pycopy_engine.core.routeshare import (
    ENTRY,
    HEAD,
    T_LINK,
    T_RECORDS,
    LinkBalancer,
    Remote,
    RouteShare,
    decode_head,
    encode_link,
)
from pycopy_engine.errors import ProtocolError
from pycopy_engine.wire.control import RECORD_SIZE

SYN_ACK, ACK = 0x12, 0x10


def key(i: int) -> Tuple[bytes, int, bytes, int]:
    return (bytes([10, 0, 1, i % 250 + 1]), 20000 + i, b"\x0a\0\0\x0c", 8080)


def record(k, n: int, flags: int = ACK) -> bytes:
    """A 64-byte answer record of key ``k`` (target -> client); ``n`` marks it."""
    cip, cport, tip, tport = k
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + tip + cip
    tcp = (tport.to_bytes(2, "big") + cport.to_bytes(2, "big") + n.to_bytes(4, "big")
           + bytes(4) + bytes([0x50, flags]) + bytes(6))
    return ip + tcp + bytes(24)


class Cluster:
    """N workers and the datagrams between them."""

    def __init__(self, n: int, rewrite=None) -> None:
        self.n = n
        self.routers = [Router() for _ in range(n)]
        self.shares = [RouteShare(i, n, self.routers[i], rewrite=rewrite) for i in range(n)]
        self.wire: Dict[Tuple[int, int], Deque[bytes]] = defaultdict(deque)
        self.got: Dict[Any, List[bytes]] = defaultdict(list)  # link -> records written to it
        self.now = 0.0

    def link(self, w: int, link: int) -> Tuple[str, int, int]:
        return ("link", w, link)

    def client_add(self, w: int, k, link: int) -> None:
        self.now += 1e-6  # the shared clock moves on between two CLIENT_ADDs
        conn = self.link(w, link)
        for rec in self.routers[w].add(k, conn, self.now):
            self.got[conn].append(rec)
        self.shares[w].local_add(k, link, self.now)

    def capture(self, w: int, k, rec: bytes) -> None:
        to = self.routers[w].route(k, rec, rec[33], self.now)
        if to is None:
            return
        if isinstance(to, Remote):
            self.shares[w].forward(to.worker, rec)
        else:
            self.got[to].append(rec)

    def close_link(self, w: int, link: int) -> None:
        self.routers[w].drop_conn(self.link(w, link))
        self.shares[w].link_down(link)

    def pump(self, w: int) -> None:
        for dst, dg in self.shares[w].datagrams():
            self.wire[(w, dst)].append(dg)

    def deliver(self, src: int, dst: int) -> bool:
        q = self.wire[(src, dst)]
        if not q:
            return False
        for conn, rec in self.shares[dst].receive(q.popleft(), self.now):
            self.got[conn].append(rec)
        return True

    def deliver_drawn(self, arg: int) -> None:
        """Deliver the next datagram between the two workers ``arg`` picks (none
        when it picks one worker twice): the random tests' delivery order."""
        src, dst = arg % self.n, (arg // self.n) % self.n
        if src != dst:
            self.deliver(src, dst)

    def settle(self) -> None:
        for _ in range(100):
            for w in range(self.n):
                self.pump(w)
            moved = [self.deliver(s, d) for s in range(self.n) for d in range(self.n) if s != d]
            if not any(moved) and not any(s.pending for s in self.shares):
                return
        raise AssertionError("the workers never settled")


def test_answer_on_another_worker_reaches_the_owner_link():
    c = Cluster(2)
    k = key(1)
    c.client_add(0, k, link=7)
    c.settle()
    assert c.routers[1].routes[k][0] == Remote(0, 7)
    c.capture(1, k, record(k, 1))
    c.capture(1, k, record(k, 2))
    assert c.got == {}  # batched until the turn ends
    c.pump(1)
    assert len(c.wire[(1, 0)]) == 1  # both records in one datagram
    c.deliver(1, 0)
    assert c.got[("link", 0, 7)] == [record(k, 1), record(k, 2)]
    s0, s1 = c.routers[0].stats.c, c.routers[1].stats.c
    assert s1["records_forwarded"] == 2 and s0["records_from_workers"] == 2
    assert s0["routes_broadcast"] == 1 and s1["routes_learned"] == 1 and s1["route_add"] == 0


def test_synack_that_beats_the_broadcast_is_held_then_forwarded():
    c = Cluster(3)
    k = key(2)
    c.capture(2, k, record(k, 1, SYN_ACK))  # worker 2 sees the SYN-ACK first
    c.capture(2, k, record(k, 2, ACK))
    c.client_add(0, k, link=1)
    c.settle()
    assert c.got[("link", 0, 1)] == [record(k, 1, SYN_ACK), record(k, 2, ACK)]
    assert c.routers[2].stats.c["delay_sent"] == 1


def test_owner_side_capture_stays_local():
    c = Cluster(2)
    k = key(3)
    c.client_add(1, k, link=4)
    c.capture(1, k, record(k, 9))
    assert c.got[("link", 1, 4)] == [record(k, 9)]
    c.settle()
    assert c.routers[1].stats.c["records_forwarded"] == 0


def test_link_down_removes_its_routes_everywhere_and_late_records_are_counted():
    c = Cluster(3)
    ka, kb = key(4), key(5)
    c.client_add(0, ka, link=1)
    c.client_add(0, kb, link=2)
    c.settle()
    c.capture(1, ka, record(ka, 1))  # forwarded, but link 1 closes before it arrives
    c.pump(1)
    c.close_link(0, 1)
    c.deliver(1, 0)
    assert c.got == {}
    assert c.routers[0].stats.c["drop:forwarded_unroutable"] == 1
    c.settle()
    for r in c.routers[1:]:
        assert ka not in r.routes and r.routes[kb][0] == Remote(0, 2)
        assert r.stats.c["routes_forgotten"] == 1


def test_expiry_on_the_owner_is_broadcast():
    c = Cluster(2)
    k = key(6)
    c.client_add(0, k, link=1)
    c.settle()
    for conn_key, conn in c.routers[0].expire(5000.0):
        c.shares[0].local_del(conn_key, conn[2])
    c.settle()
    assert k not in c.routers[1].routes


def test_a_later_client_add_elsewhere_moves_the_route_and_a_stale_del_does_not_undo_it():
    c = Cluster(3)
    k = key(7)
    c.client_add(0, k, link=1)
    c.settle()
    c.client_add(2, k, link=5)  # tcpcopy re-registered the tuple on another link
    c.settle()
    assert [r.routes[k][0] for r in c.routers] == [Remote(2, 5), Remote(2, 5), ("link", 2, 5)]
    c.shares[0].local_del(k, 1)  # worker 0's old route expiring: not the current owner
    c.settle()
    assert c.routers[1].routes[k][0] == Remote(2, 5)


def test_a_forwarded_record_is_never_forwarded_again():
    c = Cluster(3)
    k = key(8)
    c.client_add(0, k, link=1)
    c.settle()
    c.capture(1, k, record(k, 1))
    c.pump(1)
    c.client_add(2, k, link=3)  # worker 0 learns the move before the record arrives
    c.pump(2)
    assert c.deliver(2, 0) and c.deliver(1, 0)
    c.settle()
    assert c.got.get(("link", 2, 3), []) == []
    assert c.routers[0].stats.c["drop:forwarded_unroutable"] == 1


def test_rewrite_applies_to_forwarded_records():
    a, b = b"\xac\x11\0\x02", b"\x0a\0\x01\x05"
    c = Cluster(2, rewrite=(a, b))
    k = (b, 30000, b"\x0a\0\0\x0c", 8080)
    c.client_add(0, k, link=1)
    c.settle()
    rec = record((a, 30000, b"\x0a\0\0\x0c", 8080), 1)
    c.capture(1, k, rec)  # the capturing side computed the rewritten key
    c.settle()
    assert c.got[("link", 0, 1)] == [rec]


def test_large_batches_are_split_into_bounded_datagrams():
    c = Cluster(2)
    keys = [key(i) for i in range(3000)]
    for k in keys:
        c.client_add(0, k, link=1)
    dgs = c.shares[0].datagrams()
    assert len(dgs) > 1 and all(len(d) <= 32 * 1024 + HEAD.size for _, d in dgs)
    for _, d in dgs:
        c.shares[1].receive(d, 0.0)
    assert len(c.routers[1].routes) == 3000


@pytest.mark.parametrize("data", [
    b"", b"\x01", b"\x09\x00", HEAD.pack(1, 200),
    HEAD.pack(1, 1) + b"x" * (ENTRY.size - 1),
    HEAD.pack(T_RECORDS, 1) + b"x" * (RECORD_SIZE + 3),
    HEAD.pack(1, 0),  # from itself
    HEAD.pack(1, 5),  # from a worker that does not exist
    HEAD.pack(1, 1) + ENTRY.pack(9, 1, b"\0" * 4, 0, b"\0" * 4, 0, 0.0),
    encode_link(1, "10.0.0.1:4000"),
])
def test_malformed_datagrams_raise_protocol_error(data):
    share = RouteShare(0, 2, Router())
    with pytest.raises(ProtocolError):
        share.receive(data, 0.0)


def test_link_handover_head():
    assert decode_head(encode_link(3, "10.0.0.1:4000")) == (T_LINK, 3)


def test_balancer_spreads_links_and_refills_the_emptiest():
    b = LinkBalancer(3)
    assert [b.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    b.closed(1)
    b.closed(1)
    assert b.pick() == 1 and b.pick() == 1 and b.pick() == 2  # then in turn again


def test_balancer_learns_closed_links_from_broadcasts():
    c = Cluster(2)
    b = LinkBalancer(2)
    c.shares[0].balancer = b
    assert (b.pick(), b.pick(), b.pick()) == (0, 1, 0)
    c.close_link(1, 9)
    c.settle()
    assert b.links == [2, 0]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 4), data=st.data())
def test_every_answer_reaches_its_owner_once_and_in_order(n, data):
    """Random owners, capture workers and interleavings of CLIENT_ADD, captures
    and datagram deliveries: each session's answers reach the link that
    registered it, exactly once, in capture order, as long as its first
    captured answer is the SYN-ACK (what the delay table holds for 30 s)."""
    c = Cluster(n)
    nkeys = data.draw(st.integers(1, 6))
    sessions = []
    for i in range(nkeys):
        owner = data.draw(st.integers(0, n - 1))
        capw = data.draw(st.integers(0, n - 1))
        nrec = data.draw(st.integers(1, 5))
        recs = [record(key(i), j, SYN_ACK if j == 0 else ACK) for j in range(nrec)]
        sessions.append({"k": key(i), "owner": owner, "capw": capw, "link": 100 + i,
                         "recs": deque(recs), "all": recs, "added": False})
    steps = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 63)), max_size=80))
    for op, arg in steps:
        s = sessions[arg % nkeys]
        if op == 0 and not s["added"]:
            c.client_add(s["owner"], s["k"], s["link"])
            s["added"] = True
        elif op == 1 and s["recs"]:
            c.capture(s["capw"], s["k"], s["recs"].popleft())
        elif op == 2:
            c.pump(arg % n)
        else:
            c.deliver_drawn(arg)
    for s in sessions:
        if not s["added"]:
            c.client_add(s["owner"], s["k"], s["link"])
        while s["recs"]:
            c.capture(s["capw"], s["k"], s["recs"].popleft())
    c.settle()
    for s in sessions:
        assert c.got[("link", s["owner"], s["link"])] == s["all"]
    assert sum(len(v) for v in c.got.values()) == sum(len(s["all"]) for s in sessions)
    for r in c.routers:
        assert r.stats.c["drop:forwarded_unroutable"] == 0



@settings(max_examples=400, deadline=None)
@given(n=st.integers(2, 3), data=st.data())
def test_moves_and_closed_links_never_misdeliver(n, data):
    """Sessions registered, moved to other links (a tcpcopy reconnecting with -L,
    on whichever worker the new link landed) and links closed, with datagrams
    delivered in random order: a record only ever reaches a link that
    registered its key, at most once; once everything settled, answers
    captured anywhere reach the key's last registration."""
    c = Cluster(n)
    nkeys = data.draw(st.integers(1, 2))
    keys = [key(i) for i in range(nkeys)]
    registered: Dict[Any, set] = {k: set() for k in keys}
    last: Dict[Any, Any] = {}
    closed: set = set()
    serial = [0]

    def register(k, w):
        serial[0] += 1
        link = serial[0]
        c.client_add(w, k, link)
        registered[k].add(("link", w, link))
        last[k] = ("link", w, link)

    seq = [0]

    def capture(k, w):
        seq[0] += 1
        c.capture(w, k, record(k, seq[0], SYN_ACK if seq[0] % 3 == 0 else ACK))

    steps = data.draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 255)), max_size=120))
    for op, arg in steps:
        k = keys[arg % nkeys]
        w = (arg // nkeys) % n
        if op == 0:
            register(k, w)
        elif op == 1:
            capture(k, w)
        elif op == 2:
            c.pump(w)
        elif op == 3:
            c.deliver_drawn(arg)
        elif k in last and last[k] not in closed:
            _, lw, link = last[k]
            c.close_link(lw, link)
            closed.add(last[k])
    c.settle()
    seen = set()
    for conn, recs in c.got.items():
        for rec in recs:
            k = (rec[16:20], (rec[22] << 8) | rec[23], rec[12:16], (rec[20] << 8) | rec[21])
            assert conn in registered[k], (conn, k)
            assert rec not in seen
            seen.add(rec)
    c.now = 0.5  # the early table's answers are still held: only what follows counts
    for k in keys:  # a final registration each, settled, then one answer per worker
        register(k, data.draw(st.integers(0, n - 1)))
    c.settle()
    before = {conn: len(v) for conn, v in c.got.items()}
    for k in keys:
        for w in range(n):
            capture(k, w)
    c.settle()
    for k in keys:
        got = c.got[last[k]][before.get(last[k], 0):]
        assert len([r for r in got if r[12:16] == k[2] and r[16:20] == k[0]
                    and (r[22] << 8 | r[23]) == k[1]]) == n


def _owners(c: Cluster, k) -> List[Any]:
    """Where each worker routes ``k``, as the link it ends at."""
    out = []
    for r in c.routers:
        conn = r.routes[k][0]
        out.append(("link", conn.worker, conn.link) if isinstance(conn, Remote) else conn)
    return out


def test_two_registrations_crossing_in_flight_end_with_the_later_everywhere():
    """Worker 0's link registers a key, worker 1's link registers it 1 ms later,
    before either broadcast arrived: each worker then learns the other's.  The
    later one must win on both (C: the last CLIENT_ADD wins), not each the other's."""
    c = Cluster(2)
    k = key(3)
    c.client_add(0, k, link=1)
    c.now += 0.001
    c.client_add(1, k, link=2)
    c.pump(0)
    c.pump(1)
    c.deliver(0, 1)  # worker 1 learns the earlier registration: ignored
    c.deliver(1, 0)  # worker 0 learns the later one: taken
    assert _owners(c, k) == [("link", 1, 2), ("link", 1, 2)]
    assert c.routers[1].stats.c["route_add_stale"] == 1
    for w in (0, 1):
        c.capture(w, k, record(k, 10 + w))
    c.settle()
    # worker 1's own capture is written at once, worker 0's comes forwarded
    assert sorted(c.got[("link", 1, 2)]) == [record(k, 10), record(k, 11)]
    assert ("link", 0, 1) not in c.got


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 4), data=st.data())
def test_concurrent_registrations_of_one_key_converge_on_the_last(n, data):
    """Registrations of one key on random workers, broadcasts delivered in any
    order between them: once settled, every worker routes it to the last one."""
    c = Cluster(n)
    k = key(5)
    last = None
    steps = data.draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 63)),
                               min_size=1, max_size=60))
    for op, arg in steps:
        if op == 0 or last is None:
            w = arg % n
            c.client_add(w, k, link=100 + len(steps) + arg)
            last = ("link", w, 100 + len(steps) + arg)
        elif op == 1:
            c.pump(arg % n)
        else:
            c.deliver_drawn(arg)
    c.settle()
    assert _owners(c, k) == [last] * n
