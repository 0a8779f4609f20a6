"""Control-channel codecs against the C tools' own bytes."""

from __future__ import annotations

import pytest

from pycopy_engine.errors import ProtocolError
from pycopy_engine.wire import control
from pycopy_engine.wire.tcpip import ACK, SYN, parse_ipv4_tcp, parse_options

from .fixtures import ip_packets, tcp_streams

S1_SYNACK = bytes.fromhex(
    "4500003c00004000400624d70ae8000c0ae8000a0050eef0589267e15760331ca012fe8816140000"
    "020405b40402080ab12ada4fb3aab5240103030a00000000")
IP_CLIENT = bytes([10, 232, 0, 10])
IP_TARGET = bytes([10, 232, 0, 12])


def test_hello_is_all_zero_but_version_6():
    assert control.HELLO == bytes.fromhex("0000000000000006000000000000")
    assert len(control.HELLO) == 14


def test_client_add_golden():
    msg = control.encode_client_add(IP_CLIENT, 61168, IP_TARGET, 80)
    assert msg == bytes.fromhex("0ae8000aeef000010ae8000c0050")


def test_parse_record_s1_synack():
    seg = control.parse_record(S1_SYNACK)
    assert (seg.src, seg.sport, seg.dst, seg.dport) == (IP_TARGET, 80, IP_CLIENT, 61168)
    assert seg.seq == 1485989857 and seg.ack == 1465922332
    assert seg.flags == SYN | ACK and seg.win == 65160 and seg.plen == 0
    opts = parse_options(seg.opts)
    assert (opts.mss, opts.sack_ok, opts.wscale) == (1460, True, 10)
    assert (opts.ts_val, opts.ts_ecr) == (2972375631, 3014309156)
    assert control.record_key(S1_SYNACK) == (IP_CLIENT, 61168, IP_TARGET, 80)


def _c_streams():
    streams = tcp_streams("control-channel.pcap")
    to_intercept = {k: v for k, v in streams.items() if k[3] == control.DEFAULT_PORT}
    to_tcpcopy = {k: v for k, v in streams.items() if k[1] == control.DEFAULT_PORT}
    return to_intercept, to_tcpcopy


def test_decode_c_tcpcopy_messages():
    to_intercept, _ = _c_streams()
    assert len(to_intercept) == 2
    adds = []
    for data in to_intercept.values():
        dec = control.ClientMsgDecoder()
        # feed in awkward pieces: the channel is a byte stream
        msgs = []
        for i in range(0, len(data), 5):
            msgs += dec.feed(data[i:i + 5])
        assert dec.version == 6 and msgs[0].type == 6
        assert dec.pending == 0
        adds += [m for m in msgs[1:]]
    assert len(adds) == 8
    assert all(m.type == control.MSG_CLIENT_ADD for m in adds)
    assert {m.target_port for m in adds} == {80}
    assert (IP_CLIENT, 61168) in {(m.clt_ip, m.clt_port) for m in adds}


def test_decode_c_intercept_frames_and_match_target_packets():
    _, to_tcpcopy = _c_streams()
    records = []
    for data in to_tcpcopy.values():
        dec = control.FrameDecoder(combined=True)
        for i in range(0, len(data), 7):
            records += dec.feed(data[i:i + 7])
        assert dec.pending == 0
    assert len(records) == 61
    assert S1_SYNACK in records
    # our intercept must build exactly these records from the target's packets
    ours = set()
    for _ts, pkt in ip_packets("target-side.pcap"):
        if pkt[12:16] == IP_TARGET:
            ours.add(control.make_record(pkt))
    assert set(records) <= ours
    # the body length comes from tot_len, which may exceed the MTU (offload)
    plens = sorted(control.parse_record(r).plen for r in records)
    assert 14480 in plens and max(plens) > 1500


def test_make_record_of_s1_synack_packet():
    for _ts, pkt in ip_packets("target-side.pcap"):
        seg = parse_ipv4_tcp(pkt)
        if seg.flags == SYN | ACK and seg.dport == 61168:
            assert control.make_record(pkt) == S1_SYNACK
            return
    pytest.fail("s1 SYN-ACK not found in target-side.pcap")


def test_combined_roundtrip_and_limits():
    frame = control.encode_frame([S1_SYNACK] * 3)
    assert frame[:2] == b"\x00\x03" and len(frame) == 2 + 3 * 64
    dec = control.FrameDecoder()
    assert dec.feed(frame[:100]) == []
    assert dec.feed(frame[100:]) == [S1_SYNACK] * 3


def test_uncombined_peer_is_named_not_silently_misparsed():
    dec = control.FrameDecoder(combined=True)
    with pytest.raises(ProtocolError, match="17664 > threshold.*uncombined"):
        dec.feed(S1_SYNACK)
    assert control.FrameDecoder(combined=False).feed(S1_SYNACK * 2) == [S1_SYNACK] * 2


def test_old_client_hello_rejected():
    dec = control.ClientMsgDecoder()
    with pytest.raises(ProtocolError, match="too old"):
        dec.feed(control.encode_client_add(IP_CLIENT, 1, IP_TARGET, 80))


def test_record_truncates_long_tcp_header_like_c():
    # a 60-byte TCP header: only 24 option bytes fit; doff keeps its value
    opts = bytes([1] * 40)
    from pycopy_engine.wire.tcpip import build_ipv4_tcp
    pkt = build_ipv4_tcp(IP_TARGET, IP_CLIENT, 80, 1000, 1, 2, ACK, 100, opts, b"x" * 10)
    rec = control.make_record(pkt)
    assert len(rec) == 64 and rec[32] >> 4 == 15
    assert control.parse_record(rec).plen == 10
