"""The session engine against an in-memory target TCP with a fake clock."""

from __future__ import annotations

import pytest

from pycopy_engine.core.engine import Engine, EngineConfig
from pycopy_engine.core.mapping import TargetMap
from pycopy_engine.wire.control import CLT
from pycopy_engine.wire.tcpip import RST, SYN, parse_ipv4_tcp, parse_options

from .simtcp import SimClient, SimServer, Wire

CLIENT = bytes([10, 1, 0, 10])
ONLINE = bytes([10, 1, 0, 11])
TARGET = bytes([10, 1, 0, 12])


def make(replicas=1, target_kw=None, **kw):
    cfg = EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 8080)], replicas=replicas, seed=7, **kw)
    eng = Engine(cfg)
    target = SimServer(TARGET, 8080, seed=99, **(target_kw or {}))
    return eng, target, Wire(eng, target)


def conversation(n_requests=3, port=40000, isn=12345, sizes=(100, 3000, 50), close=True, ts=True):
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, port, isn=isn, ts=ts)
    cl.connect()
    for i in range(n_requests):
        cl.request(b"GET %d /r%d" % (sizes[i % len(sizes)], i))
    if close:
        cl.close()
    return cl, online


def replay(wire, packets, gap=0.001):
    for pkt in packets:
        wire.capture(pkt, gap)
    wire.advance(0.1)


def test_handshake_isn_translation_and_all_requests_arrive():
    eng, target, wire = make()
    cl, online = conversation()
    replay(wire, cl.captured)
    assert [line for _p, line in target.log] == [line for _p, line in online.log]
    conn = target.conns[(CLIENT, 40000)]
    # every ACK the target got refers to its own ISN space, never the online server's
    for pkt in wire.sent:
        seg = parse_ipv4_tcp(pkt)
        assert (seg.src, seg.sport, seg.dst, seg.dport) == (CLIENT, 40000, TARGET, 8080)
        if seg.flags & SYN:
            assert seg.seq == 12345 and seg.ack == 0
    assert target.bad_checksums == 0
    c = eng.stats.c
    assert c["conns"] == 1 and c["requests_sent"] == 3 and c["sessions_closed"] == 1
    assert c["drop:pure_ack"] >= 3  # the client's own ACKs are not forwarded
    assert not eng.sessions
    assert conn.fin_rcvd and conn.closed and target.rst_rcvd == 0  # closed cleanly, no RST


def test_client_add_precedes_syn_and_is_byte_exact():
    eng, target, wire = make()
    cl, _ = conversation(1)
    eng.on_capture(cl.captured[0], 0.0)
    ctl, tx = eng.take_output()
    assert ctl == [CLT.pack(CLIENT, 40000, 1, TARGET, 8080)]
    seg = parse_ipv4_tcp(tx[0][0])
    assert seg.flags == SYN and tx[0][1] == TARGET
    # the client's SYN options go out unchanged
    assert seg.opts == parse_ipv4_tcp(cl.captured[0]).opts


def test_timestamps_rewritten_to_targets():
    eng, target, wire = make()
    cl, _ = conversation(1)
    replay(wire, cl.captured)
    conn_ts = [parse_options(parse_ipv4_tcp(p).opts) for p in wire.sent if not parse_ipv4_tcp(p).flags & SYN]
    assert conn_ts and all(o.ts_val is not None for o in conn_ts)
    # TSecr echoes the target's clock (SimServer's starts at 1000), not the online server's
    assert all(o.ts_ecr >= 1000 and o.ts_ecr < 2000 for o in conn_ts)


def test_request_held_until_response_complete():
    eng, target, wire = make()
    cl, online = conversation(2, sizes=(20000, 10))
    held = []
    # the target's response data is still on its way (held back), its ACKs are not
    def has_data(rec):
        return (rec[2] << 8 | rec[3]) - 20 - (rec[32] >> 4) * 4 > 0

    wire.drop_records = lambda rec: has_data(rec) and held.append(rec) is None
    for pkt in cl.captured[:5]:  # SYN, ACK, request 1, client ACK, request 2
        wire.capture(pkt)
    assert eng.stats.c["requests_sent"] == 1  # request 2 waits for response 1
    wire.drop_records = None
    for rec in held[:5]:  # part of the response: still less than online had sent
        eng.on_record(rec, wire.now)
    wire.settle()
    assert eng.stats.c["requests_sent"] == 1
    for rec in held[5:]:
        eng.on_record(rec, wire.now)
    wire.settle()
    assert eng.stats.c["requests_sent"] == 2  # released by size, no timer needed
    replay(wire, cl.captured[5:])
    assert [l for _p, l in target.log] == [l for _p, l in online.log]


def _held_responses(no_wait):
    """Three requests captured while the target's answers are held back: how
    many reach the target before any answer is released."""
    eng, target, wire = make(no_wait=no_wait)
    cl, online = conversation(3, sizes=(5000, 5000, 5000))
    held = []

    def has_data(rec):
        return (rec[2] << 8 | rec[3]) - 20 - (rec[32] >> 4) * 4 > 0

    wire.drop_records = lambda rec: has_data(rec) and held.append(rec) is None
    replay(wire, cl.captured[:-1], gap=0.0)  # all but the FIN, no time passes
    before = len(target.log)
    wire.drop_records = None
    for rec in held:
        eng.on_record(rec, wire.now)
    wire.settle()
    replay(wire, cl.captured[-1:])
    return before, target, online


def test_pipelined_with_W_sends_without_waiting():
    before, target, online = _held_responses(no_wait=True)
    assert before == 3  # -W: every request went before any answer came back
    assert [l for _p, l in target.log] == [l for _p, l in online.log]


def test_without_W_a_request_waits_for_the_answer_before_it():
    before, target, online = _held_responses(no_wait=False)
    assert before == 1
    assert [l for _p, l in target.log] == [l for _p, l in online.log]


def test_mid_stream_session_gets_fabricated_handshake():
    eng, target, wire = make()
    cl, online = conversation(3)
    replay(wire, cl.captured[3:])  # skip SYN, handshake ACK, first request + its ACK
    assert [l for _p, l in target.log] == [l for _p, l in online.log][1:]
    assert eng.stats.c["sessions_fake_syn"] == 1


def test_mid_stream_ignored_with_O():
    eng, target, wire = make(only_syn=True)
    cl, _ = conversation(3)
    replay(wire, cl.captured[3:])
    assert target.log == [] and eng.stats.c["drop:no_syn"] >= 1


def test_amplification_distinct_ports_all_arrive():
    eng, target, wire = make(replicas=3)
    for i in range(20):
        cl, online = conversation(2, port=40000 + i, isn=1000 * i)
        replay(wire, cl.captured)
    ports = {peer[1] for peer, _l in target.log}
    assert len(target.log) == 3 * 2 * 20
    assert len(ports) == 60
    assert eng.stats.c["sessions_opened"] == 60


def test_port_allocator_avoids_collisions():
    eng, target, wire = make(replicas=4)
    # two clients whose copies would land on the same ports: 40000 and 40000 + 32
    a, _ = conversation(1, port=40000, isn=1)
    b, _ = conversation(1, port=40000 + 32 + eng.mapper.rand, isn=2)
    wire.capture(a.captured[0])
    wire.capture(b.captured[0])
    keys = list(eng.sessions)
    assert len(keys) == len(set(keys)) == 8
    assert eng.stats.c["port_collision_avoided"] >= 1


def test_retransmission_after_loss():
    eng, target, wire = make()
    cl, online = conversation(2)
    dropped = []

    def lose_first_request(pkt):
        seg = parse_ipv4_tcp(pkt)
        if seg.plen and not dropped:
            dropped.append(pkt)
            return True
        return False

    wire.drop_to_target = lose_first_request
    replay(wire, cl.captured[:3])
    wire.drop_to_target = None
    wire.advance(1.0)
    replay(wire, cl.captured[3:])
    assert dropped and eng.stats.c["retransmit"] >= 1
    assert [l for _p, l in target.log] == [l for _p, l in online.log]


@pytest.mark.pure_only  # replaces Engine.take_output
def test_window_respected():
    eng, target, wire = make(target_kw={"window": 2000, "wscale": None})
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, 40000, isn=5)
    cl.connect()
    cl.request(b"POST 10 " + b"x" * 10000)
    cl.close()
    seen_max = []
    take = eng.take_output

    def spy():
        # every packet of one batch leaves before the target's next ACK is
        # back: the data beyond what the target had acknowledged is in flight
        ctl, tx = take()
        conn = target.conns.get((CLIENT, 40000))
        for pkt, _dst in tx:
            seg = parse_ipv4_tcp(pkt)
            if seg.plen and conn is not None:
                seen_max.append((seg.seq + seg.plen - conn.rcv_nxt) & 0xFFFFFFFF)
        return ctl, tx

    eng.take_output = spy
    replay(wire, cl.captured)
    assert len(target.log) == 1
    assert eng.stats.c["hold:window"] >= 1
    # never more unacknowledged data in flight than the target's 2000-byte window
    assert len(seen_max) >= 5 and max(seen_max) <= 2000, max(seen_max)


def test_target_close_with_remaining_requests_rebuilds():
    eng, target, wire = make(target_kw={"close_after": 1})
    cl, online = conversation(3, close=False)
    replay(wire, cl.captured)
    wire.advance(0.5)
    assert len(target.log) == 3  # each on a rebuilt connection
    assert eng.stats.c["reconnect"] == 2


def test_target_rst_without_pending_data_ends_session():
    eng, target, wire = make()
    cl, _ = conversation(1, close=False)
    replay(wire, cl.captured)
    s = next(iter(eng.sessions.values()))
    conn = target.conns[(CLIENT, 40000)]
    from pycopy_engine.wire.control import make_record
    from pycopy_engine.wire.tcpip import build_ipv4_tcp
    rst = build_ipv4_tcp(TARGET, CLIENT, 8080, 40000, conn.snd_nxt, 0, RST, 0)
    eng.on_record(make_record(rst), wire.now)
    assert s.ended and not eng.sessions and eng.stats.c["resp_rst"] == 1


def test_handshake_timeout_sends_rst_and_counts_reason():
    eng, target, wire = make()
    wire.drop_records = lambda rec: True  # intercept never reports anything
    cl, _ = conversation(1)
    wire.capture(cl.captured[0])
    wire.advance(5.0)
    assert eng.stats.c["sessions_failed:handshake_timeout"] == 1
    assert eng.stats.c["rst_sent:handshake_timeout"] == 1
    assert eng.stats.c["syn_retransmit"] >= 1
    assert parse_ipv4_tcp(wire.sent[-1]).flags & RST


def test_idle_and_keepalive_timeouts():
    eng, target, wire = make(session_timeout=10, keepalive_timeout=20)
    cl, _ = conversation(1, close=False)
    replay(wire, cl.captured)
    assert eng.sessions
    wire.advance(25)
    assert eng.stats.c["sessions_failed:keepalive_timeout"] == 1
    assert target.rst_rcvd == 1


def test_shutdown_resets_every_live_session():
    eng, target, wire = make()
    for i in range(5):
        cl, _ = conversation(1, port=41000 + i, close=False)
        replay(wire, cl.captured)
    assert len(eng.sessions) == 5
    assert eng.shutdown(wire.now) == 5
    wire.settle()
    assert target.rst_rcvd == 5 and not eng.sessions
    assert eng.stats.c["rst_sent:shutdown"] == 5


def test_sampling_is_per_session():
    eng, target, wire = make(sample_percent=50)
    for i in range(200):
        cl, _ = conversation(1, port=20000 + i, isn=i * 7)
        replay(wire, cl.captured, gap=0.0)
    peers = {}
    for peer, _line in target.log:
        peers[peer] = peers.get(peer, 0) + 1
    assert 70 <= len(peers) <= 130
    kept = eng.stats.c["sessions_opened"]
    assert kept == len(peers)


def test_malformed_packets_counted_not_raised():
    eng, target, wire = make()
    eng.on_capture(b"\x45\x00", 0.0)
    eng.on_capture(b"\x60" + bytes(50), 0.0)
    eng.on_record(b"\x00" * 10, 0.0)
    c = eng.stats.c
    assert c["drop:truncated"] == 1 and c["drop:not_ipv4"] == 1 and c["drop:record_truncated"] == 1


def test_port_reuse_starts_new_session():
    eng, target, wire = make()
    a, _ = conversation(1, port=43000, isn=1, close=False)
    replay(wire, a.captured)
    b, _ = conversation(1, port=43000, isn=999999, close=True)
    replay(wire, b.captured)
    assert eng.stats.c["sessions_failed:port_reuse"] == 1
    assert len(target.log) == 2


def test_greeting_protocol_waits_for_server_first():
    greeting = b"220 ready\r\n"
    online = SimServer(ONLINE, 80, seed=5, greeting=greeting)
    cl = SimClient(online, CLIENT, 44000, isn=77)
    cl.connect()
    assert cl.received == greeting
    cl.request(b"HELO 10 after-greeting")
    # a target that greets: the request follows the greeting
    eng, target, wire = make(target_kw={"greeting": greeting})
    held = []
    wire.drop_records = lambda rec: rec[33] & 0x08 and not held and held.append(rec) is None
    for pkt in cl.captured[:2]:
        wire.capture(pkt)
    wire.capture(cl.captured[2])
    assert eng.stats.c["requests_sent"] == 0  # the greeting was lost on the way: hold
    assert target.log == []
    # the same conversation, greeting delivered: the request goes out
    eng2, target2, wire2 = make(target_kw={"greeting": greeting})
    replay(wire2, cl.captured)
    assert [l for _p, l in target2.log] == [b"HELO 10 after-greeting"]
    # a target that never greets: the request waits (no response data at all)
    eng3, target3, wire3 = make()
    replay(wire3, cl.captured)
    wire3.advance(1.0)
    assert eng3.stats.c["requests_sent"] == 0 and target3.log == []


def test_fast_retransmit_after_three_duplicate_acks():
    eng, target, wire = make()
    online = SimServer(ONLINE, 80, seed=5)
    cl = SimClient(online, CLIENT, 45000, isn=9)
    cl.connect()
    cl.request(b"POST 10 " + b"u" * 12000)  # one captured super-packet: 9 segments to the target
    cl.close()
    lost = []

    def lose_second_segment(pkt):
        seg = parse_ipv4_tcp(pkt)
        if seg.plen and not lost and seg.seq != 10:  # not the first data segment
            lost.append(seg.seq)
            return True
        return False

    wire.drop_to_target = lose_second_segment
    wire.capture(cl.captured[0])
    wire.capture(cl.captured[1])
    wire.capture(cl.captured[2])
    wire.drop_to_target = None
    assert lost and eng.stats.c["fast_retransmit"] == 1
    assert eng.stats.c["retransmit"] == 1
    replay(wire, cl.captured[3:])
    assert [l for _p, l in target.log] == [l for _p, l in online.log]
