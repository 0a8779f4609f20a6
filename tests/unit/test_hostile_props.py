"""Random and mutated input never escapes as an unexpected exception; every
reject is counted (issue: hostile and broken input)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycopy_engine.core.engine import Engine, EngineConfig
from pycopy_engine.core.mapping import TargetMap
from pycopy_engine.errors import ProtocolError, WireError
from pycopy_engine.wire import control
from pycopy_engine.wire.tcpip import (
    ACK,
    PSH,
    SYN,
    build_ipv4_tcp,
    parse_ipv4_tcp,
    parse_options,
    ts_option,
)

ONLINE = bytes([10, 0, 0, 11])
TARGET = bytes([10, 0, 0, 12])
CLIENT = bytes([10, 0, 0, 10])

VALID = [
    build_ipv4_tcp(CLIENT, ONLINE, 40000, 80, 1, 0, SYN, 65535, ts_option(1, 0)),
    build_ipv4_tcp(CLIENT, ONLINE, 40000, 80, 2, 5, ACK | PSH, 502, ts_option(2, 9), b"GET / HTTP/1.1\r\n\r\n"),
    build_ipv4_tcp(TARGET, CLIENT, 80, 40000, 5, 2, SYN | ACK, 65535, b"\x02\x04\x05\xb4\x01\x03\x03\x07"),
]


def mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
cut = st.integers(0, 200)


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_wire_error(data):
    for fn in (parse_ipv4_tcp, control.make_record, control.parse_record, parse_options):
        try:
            fn(data)
        except WireError:
            pass


@settings(max_examples=400)
@given(st.sampled_from(VALID), mutations, cut)
def test_mutated_packets_only_raise_wire_error(pkt, edits, n):
    data = mutate(pkt, edits)[: max(n, 1)]
    try:
        seg = parse_ipv4_tcp(data)
    except WireError:
        return
    assert seg.plen == len(seg.payload) >= 0


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_frame_decoder_garbage(chunks, combined):
    dec = control.FrameDecoder(combined=combined)
    try:
        for c in chunks:
            for rec in dec.feed(c):
                assert len(rec) == control.RECORD_SIZE
    except ProtocolError as exc:
        assert "threshold" in str(exc)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=100), max_size=8))
def test_client_msg_decoder_garbage(chunks):
    dec = control.ClientMsgDecoder()
    try:
        for c in chunks:
            for m in dec.feed(c):
                assert m.type in (control.MSG_CLIENT_ADD, control.MSG_CLIENT_DEL, control.MSG_AUTH,
                                  dec.version)
    except ProtocolError:
        pass


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(VALID + [b""]), mutations, cut,
                          st.integers(0, 0xFFFFFFFF)), min_size=1, max_size=30))
def test_engine_survives_hostile_captures_and_records(items):
    eng = Engine(EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 80)], seed=1))
    now = 0.0
    for pkt, edits, n, seq in items:
        data = mutate(pkt, edits)[: max(n, 1)] if pkt else bytes(n)
        if len(data) > 28 and seq & 1:  # absurd sequence numbers
            data = data[:24] + seq.to_bytes(4, "big") + data[28:]
        now += 0.5
        eng.on_capture(data, now)
        rec = data[:64].ljust(64, b"\0") if seq & 2 else data
        eng.on_record(rec, now)
        eng.on_timer(now)
        eng.take_output()
    c = eng.stats.c
    assert c["clt_packets"] == len(items) and c["resp"] == len(items)
    eng.shutdown(now + 1)
    assert not eng.sessions


def test_every_reject_is_counted_by_reason():
    eng = Engine(EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 80)], seed=1))
    frag = mutate(VALID[0], [(6, 0x20)])
    eng.on_capture(frag, 0.0)
    eng.on_capture(VALID[0][:30], 0.0)
    eng.on_capture(build_ipv4_tcp(CLIENT, ONLINE, 1, 81, 1, 0, SYN, 1), 0.0)
    c = eng.stats.c
    assert (c["drop:fragment"], c["drop:truncated"], c["drop:no_map"]) == (1, 1, 1)


def test_auth_roundtrip_and_rejects():
    secret = b"s" * 20
    msg = control.encode_auth(secret, 1_000_000, b"n" * 8)
    dec = control.ClientMsgDecoder()
    msgs = dec.feed(control.HELLO + msg[:20])
    assert [m.type for m in msgs] == [6] and dec.auth is None
    msgs = dec.feed(msg[20:] + control.encode_client_add(CLIENT, 1, TARGET, 80))
    assert [m.type for m in msgs] == [control.MSG_AUTH, control.MSG_CLIENT_ADD]
    assert control.check_auth(secret, dec.auth, 1_000_500) == ""
    assert control.check_auth(b"x" * 20, dec.auth, 1_000_500) == "wrong secret"
    assert "too old" in control.check_auth(secret, dec.auth, 2_000_000)
    late = control.ClientMsgDecoder()
    with pytest.raises(ProtocolError, match="after other messages"):
        late.feed(control.HELLO + control.encode_client_add(CLIENT, 1, TARGET, 80) + msg)
