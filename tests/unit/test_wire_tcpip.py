"""IPv4/TCP codec and checksums: golden packets, scapy as the independent reference, properties."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycopy_engine.errors import WireError
from pycopy_engine.wire import checksum as ck
from pycopy_engine.wire.tcpip import (
    ACK,
    FIN,
    PSH,
    SYN,
    build_ipv4_tcp,
    find_ts,
    parse_ipv4_tcp,
    parse_options,
    seq_diff,
    seq_lt,
    syn_options,
    ts_option,
)

from .fixtures import ip_packets

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def slow_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@given(st.binary(min_size=0, max_size=3000))
def test_full_checksum_matches_word_loop(data):
    assert ck.checksum(data) == slow_checksum(data)


@settings(max_examples=300)
@given(st.binary(min_size=40, max_size=200).filter(lambda b: any(b)), st.data())
def test_incremental_update_equals_full_recompute(data, draw):
    data = bytearray(data)
    data[0] |= 1  # never all-zero: a real header always has non-zero words
    struct.pack_into("!H", data, 10, 0)
    struct.pack_into("!H", data, 10, ck.checksum(data))
    off = draw.draw(st.integers(0, (len(data) - 4) // 2 - 1)) * 2
    if off in (10, 8):
        off = 12
    width = draw.draw(st.sampled_from([2, 4]))
    new = draw.draw(st.binary(min_size=width, max_size=width))
    old = bytes(data[off:off + width])
    hc = struct.unpack_from("!H", data, 10)[0]
    data[off:off + width] = new
    fresh = bytearray(data)
    struct.pack_into("!H", fresh, 10, 0)
    expect = ck.checksum(fresh)
    assert ck.update(hc, old, new) == expect
    oldi, newi = int.from_bytes(old, "big"), int.from_bytes(new, "big")
    assert (ck.update16 if width == 2 else ck.update32)(hc, oldi, newi) == expect


def test_build_matches_scapy_checksums():
    scapy = pytest.importorskip("scapy.all")
    opts = ts_option(123456, 654321)
    pkt = build_ipv4_tcp(A, B, 40000, 80, 1000, 2000, ACK | PSH, 502, opts, b"GET / HTTP/1.1\r\n\r\n", ip_id=7)
    ref = scapy.IP(pkt)
    got_ip, got_tcp = ref.chksum, ref[scapy.TCP].chksum
    del ref.chksum
    del ref[scapy.TCP].chksum
    ref2 = scapy.IP(bytes(ref))
    assert (got_ip, got_tcp) == (ref2.chksum, ref2[scapy.TCP].chksum)
    assert ck.tcp_checksum(A, B, pkt[20:]) == 0  # verifies


def test_roundtrip_fields():
    opts = syn_options(1460, wscale=7, sack_ok=True, ts=(5, 0))
    pkt = build_ipv4_tcp(A, B, 1234, 80, 0xFFFFFFF0, 0, SYN, 65535, opts, ip_id=9, ttl=63)
    seg = parse_ipv4_tcp(pkt)
    assert (seg.src, seg.dst, seg.sport, seg.dport) == (A, B, 1234, 80)
    assert (seg.seq, seg.flags, seg.win, seg.ip_id, seg.ttl, seg.plen) == (0xFFFFFFF0, SYN, 65535, 9, 63, 0)
    o = parse_options(seg.opts)
    assert (o.mss, o.wscale, o.sack_ok, o.ts_val, o.ts_ecr) == (1460, 7, True, 5, 0)


def test_every_fixture_packet_parses_and_payload_lengths_agree():
    n = 0
    for name in ("online-side.pcap", "target-side.pcap"):
        for _ts, pkt in ip_packets(name):
            seg = parse_ipv4_tcp(pkt)
            assert seg.plen == len(seg.payload)
            n += 1
    assert n == 127 + 124


def test_fixture_ts_fast_path():
    for _ts, pkt in ip_packets("online-side.pcap"):
        seg = parse_ipv4_tcp(pkt)
        o = parse_options(seg.opts)
        assert find_ts(seg.opts) == ((o.ts_val, o.ts_ecr) if o.ts_val is not None else None)


@pytest.mark.parametrize("mutate,reason", [
    (lambda p: p[:10], "truncated"),
    (lambda p: bytes([0x65]) + p[1:], "not_ipv4"),
    (lambda p: bytes([0x44]) + p[1:], "bad_ihl"),
    (lambda p: p[:9] + b"\x11" + p[10:], "not_tcp"),
    (lambda p: p[:6] + b"\x20\x00" + p[8:], "fragment"),
    (lambda p: p[:2] + b"\x00\x15" + p[4:], "bad_length"),
    (lambda p: p[:2] + b"\x05\xdc" + p[4:], "truncated"),
    (lambda p: p[:32] + b"\x40" + p[33:], "bad_doff"),
    (lambda p: p[:32] + b"\xf0" + p[33:], "bad_doff"),
])
def test_malformed_packets_raise_with_reason(mutate, reason):
    pkt = build_ipv4_tcp(A, B, 1, 2, 3, 4, ACK | FIN, 5, b"", b"abcd")
    with pytest.raises(WireError) as exc:
        parse_ipv4_tcp(mutate(pkt))
    assert exc.value.reason == reason


@pytest.mark.parametrize("opts", [b"\x02", b"\x02\x09\x00\x00", b"\x08\x01\x00\x00", b"\x03\x00\x00\x00"])
def test_bad_options_raise(opts):
    with pytest.raises(WireError):
        parse_options(opts)


def test_sequence_space():
    assert seq_lt(0xFFFFFFF0, 5) and not seq_lt(5, 0xFFFFFFF0)
    assert seq_diff(5, 0xFFFFFFF0) == 21 and seq_diff(0xFFFFFFF0, 5) == -21
