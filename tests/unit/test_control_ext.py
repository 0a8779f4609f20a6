"""The pycopy extension of the control protocol (wire/control_ext.py): codec,
and the 1.0 framing left byte-identical when it is not negotiated."""

from __future__ import annotations

import pytest

from pycopy_engine.errors import ProtocolError
from pycopy_engine.wire.control import (
    CLT_SIZE,
    HELLO,
    ClientMsgDecoder,
    FrameDecoder,
    encode_client_add,
    encode_frame,
)
from pycopy_engine.wire.control_ext import (
    CAP_ANSWERS,
    EXT_ACCEPT,
    EXT_PAYLOAD,
    decode_body,
    encode_accept,
    encode_ext_request,
    encode_item,
    payload_frames,
)

IP1, IP2 = bytes([10, 1, 0, 10]), bytes([10, 1, 0, 12])


def rec(i: int) -> bytes:
    # a 64-byte record that starts like an IPv4 header, as intercept's do
    return bytes([0x45, 0]) + bytes([i % 256]) * 62


def test_request_is_one_plain_record_a_1_0_reader_can_skip():
    req = encode_ext_request(CAP_ANSWERS)
    assert len(req) == CLT_SIZE  # no body: a C intercept reads one record of an unknown type
    dec = ClientMsgDecoder()
    add = encode_client_add(IP1, 5000, IP2, 80)
    msgs = dec.feed(HELLO + req + add)
    assert dec.ext == CAP_ANSWERS
    assert [m.type for m in msgs][-1] == 1 and msgs[-1].clt_port == 5000


def test_no_request_means_no_extension():
    dec = ClientMsgDecoder()
    dec.feed(HELLO + encode_client_add(IP1, 5000, IP2, 80))
    assert dec.ext == 0
    with pytest.raises(ValueError):
        encode_ext_request(0)


def test_payload_items_round_trip():
    items = [encode_item(IP1, 5000 + i, IP2, 80, 0xFFFFFF00 + i, 7, 0x18, bytes([i]) * (i * 100))
             for i in range(5)]
    frames = payload_frames(items)
    assert len(frames) == 1
    dec = FrameDecoder(ext=True)
    assert dec.feed(frames[0]) == []
    (body,) = dec.ext_frames
    kind, got = decode_body(body)
    assert kind == EXT_PAYLOAD
    assert [(g[1], g[4], g[6], bytes(g[7])) for g in got] == [
        (5000 + i, 0xFFFFFF00 + i, 0x18, bytes([i]) * (i * 100)) for i in range(5)]
    assert decode_body(encode_accept(CAP_ANSWERS)[6:]) == (EXT_ACCEPT, CAP_ANSWERS)


def test_payload_frames_split_under_the_limit():
    items = [encode_item(IP1, 1, IP2, 80, i, 0, 0x10, b"x" * 1000) for i in range(10)]
    frames = payload_frames(items, limit=3500)
    assert len(frames) == 4
    seqs = [it[4] for f in frames for it in decode_body(f[6:])[1]]  # type: ignore[union-attr]
    assert seqs == list(range(10))


def test_truncated_item_is_a_protocol_error():
    body = payload_frames([encode_item(IP1, 1, IP2, 80, 1, 0, 0x10, b"abc")])[0][6:]
    with pytest.raises(ProtocolError):
        decode_body(body[:-1])
    with pytest.raises(ProtocolError):
        decode_body(body[:10])


@pytest.mark.parametrize("combined", [True, False])
def test_ext_reader_gives_the_same_records_with_frames_interleaved_at_any_split(combined):
    records = [rec(i) for i in range(20)]
    if combined:
        parts = [encode_frame(records[i:i + 3]) for i in range(0, 20, 3)]
    else:
        parts = records[:]
    plain = b"".join(parts)
    extra = [encode_accept(CAP_ANSWERS),
             payload_frames([encode_item(IP1, 1, IP2, 80, 9, 0, 0x18, b"hello")])[0]]
    mixed = extra[0] + b"".join(p + (extra[1] if i % 2 else b"") for i, p in enumerate(parts))
    for split in range(1, len(mixed)):
        dec = FrameDecoder(combined=combined, ext=True)
        got = dec.feed(mixed[:split]) + dec.feed(mixed[split:])
        assert got == records, split
        assert len(dec.ext_frames) == 1 + len(parts) // 2
    # without the extension the 1.0 reader is unchanged, and refuses such a frame as before
    assert FrameDecoder(combined=combined).feed(plain) == records
    if combined:
        with pytest.raises(ProtocolError):
            FrameDecoder(combined=True).feed(extra[0])


def test_request_after_the_authentication_record():
    from pycopy_engine.wire.control import check_auth, encode_auth

    secret = b"s3cret"
    dec = ClientMsgDecoder()
    stream = HELLO + encode_auth(secret, 1000, b"12345678") + encode_ext_request(CAP_ANSWERS)
    for i in range(len(stream)):  # whatever the reads' boundaries
        dec = ClientMsgDecoder()
        dec.feed(stream[:i])
        dec.feed(stream[i:])
        assert dec.ext == CAP_ANSWERS and dec.auth is not None
    assert check_auth(secret, dec.auth, 1000) == ""
