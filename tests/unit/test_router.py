"""intercept's route table, delay table and combined frames (sans-IO)."""

from __future__ import annotations

from pycopy_engine.core.router import Combiner, Router
from pycopy_engine.wire.control import FrameDecoder

K1 = (b"\x0a\0\0\x0a", 40000, b"\x0a\0\0\x0c", 80)
K2 = (b"\x0a\0\0\x0a", 40001, b"\x0a\0\0\x0c", 80)
SYN_ACK, ACK, RST = 0x12, 0x10, 0x04


def test_exact_tuple_routing():
    r = Router()
    assert r.add(K1, "a", 0.0) == []
    r.add(K2, "b", 0.0)
    assert r.route(K1, b"rec", ACK, 1.0) == "a"
    assert r.route(K2, b"rec", ACK, 1.0) == "b"
    other = (K1[0], K1[1], K1[2], 81)  # same client, other target port: no aliasing
    assert r.route(other, b"rec", ACK, 1.0) is None
    r.expire(1.5, routes=False)
    assert r.stats.c["drop:no_route"] == 0  # held a moment for a late CLIENT_ADD ...
    r.expire(2.01, routes=False)
    assert r.stats.c["drop:no_route"] == 1  # ... then counted as not ours


def test_synack_before_client_add_is_held_and_delivered():
    r = Router()
    assert r.route(K1, b"synack", SYN_ACK, 0.0) is None
    assert r.route(K1, b"rst", RST, 0.1) is None
    assert r.route(K1, b"data", ACK, 0.2) is None
    assert r.add(K1, "a", 0.3) == [b"synack", b"rst", b"data"]
    c = r.stats.c
    assert (c["delayed"], c["delay_sent"], c["early"], c["early_sent"]) == (2, 2, 1, 1)
    assert c["drop:no_route"] == 0


def test_a_challenge_ack_that_beats_its_client_add_waits_a_second_not_thirty():
    """The target's ACK to a SYN that hit its TIME_WAIT, read before the CLIENT_ADD."""
    r = Router(max_early=2)
    assert r.route(K1, b"ack", ACK, 0.0) is None
    assert r.add(K1, "a", 0.05) == [b"ack"]  # C drops it: the session would wait for nothing
    r.route(K2, b"a1", ACK, 0.1)
    r.route(K2, b"a2", ACK, 0.1)
    r.route(K2, b"a3", ACK, 0.1)  # over the bound: dropped at once
    assert r.stats.c["drop:no_route"] == 1 and r.n_early == 2
    r.expire(1.2, routes=False)  # past early_ttl: not ours
    assert r.n_early == 0 and r.stats.c["drop:no_route"] == 3
    assert r.add(K2, "a", 1.3) == []


def test_delayed_records_expire_after_30s():
    r = Router()
    r.route(K1, b"synack", SYN_ACK, 0.0)
    r.route(K2, b"synack", SYN_ACK, 20.0)
    r.expire(31.0, routes=False)
    assert r.stats.c["drop:delay_expired"] == 1
    assert r.add(K1, "a", 32.0) == [] and r.add(K2, "a", 32.0) == [b"synack"]


def test_routes_expire_and_table_is_bounded():
    r = Router(route_ttl=100.0, max_routes=3)
    for i in range(5):
        r.add((K1[0], 1000 + i, K1[2], 80), "a", float(i))
    assert len(r.routes) == 3 and r.stats.c["route_evicted:table_full"] == 2
    r.route((K1[0], 1004, K1[2], 80), b"x", ACK, 150.0)  # in use: kept
    r.expire(150.0)
    assert list(r.routes) == [(K1[0], 1004, K1[2], 80)]


def test_a_closed_connection_loses_its_routes():
    r = Router()
    r.add(K1, "a", 0.0)
    r.add(K2, "b", 0.0)
    assert r.drop_conn("a") == 1
    assert r.route(K1, b"x", ACK, 1.0) is None and r.route(K2, b"x", ACK, 1.0) == "b"


def test_combiner_frames_parse_as_c_tcpcopy_reads_them():
    comb = Combiner()
    recs = [bytes([i]) * 64 for i in range(20)]
    frames = [f for f in (comb.add(x) for x in recs) if f]
    frames.append(comb.flush())
    assert comb.flush() is None
    assert [f[:2] for f in frames] == [b"\x00\x10", b"\x00\x04"]
    dec = FrameDecoder()
    assert dec.feed(b"".join(frames)) == recs
