"""pycopy's negotiated extension of the control protocol (pycopy peers only).

C peers see exactly the 1.0 protocol: a tcpcopy sends the extension request
only when asked to (``--compare``), and an intercept sends extension frames
only on a connection that asked for them.

tcpcopy -> intercept, once after the hello (and after MSG_AUTH, if any): one
14-byte ``msg_clt_t`` record with ``clt_ip`` = b"PYCX", ``type`` = MSG_EXT and
``clt_port`` = the capability bits asked for.  It has no body, so a C intercept
reads it as a single record of an unknown type and ignores it; that tcpcopy
then never sees an answer frame and runs without the extension.

intercept -> tcpcopy: extension frames, interleaved with the 1.0 framing at
frame boundaries: 0xFF 0x50, a 4-byte body length, the body.  0xFF50 is never
a combined count (<= 16) nor the first bytes of an IPv4 record (0x4_), so the
reader tells them apart without state.  Body, first byte = kind:

- ``EXT_ACCEPT`` (1): 2-byte capability bits granted.  Sent once, in reply.
- ``EXT_PAYLOAD`` (2): items, each ``ITEM`` (client ip, client port, target ip,
  target port, seq, ack, TCP flags, payload length) then the payload bytes:
  the whole TCP payload of a target's answer segment, for a session this
  connection registered with CLIENT_ADD.
"""

from __future__ import annotations

import struct
from typing import Iterable, List, Tuple

from ..errors import ProtocolError
from .control import CLT, EXT_HEAD, EXT_MAGIC, EXT_MAX_BODY, MSG_EXT

CAP_ANSWERS = 0x0001  # whole answer payloads of the registered sessions
EXT_ACCEPT = 1
EXT_PAYLOAD = 2
ITEM = struct.Struct("!4sH4sHIIBH")  # 23 bytes
_CAPS = struct.Struct("!BH")
EXT_FRAME_MAGIC = 0xFF50

Item = Tuple[bytes, int, bytes, int, int, int, int, bytes]


def encode_ext_request(caps: int) -> bytes:
    """The 14-byte extension request (tcpcopy -> intercept)."""
    if not 0 < caps < 0x10000:
        raise ValueError("capability bits must be in 1..65535, not %d" % caps)
    return CLT.pack(EXT_MAGIC, caps, MSG_EXT, b"\0\0\0\0", 0)


def ext_frame(body: bytes) -> bytes:
    return EXT_HEAD.pack(EXT_FRAME_MAGIC, len(body)) + body


def encode_accept(caps: int) -> bytes:
    return ext_frame(_CAPS.pack(EXT_ACCEPT, caps))


def encode_item(cip: bytes, cport: int, tip: bytes, tport: int, seq: int, ack: int,
                flags: int, data) -> bytes:
    return ITEM.pack(cip, cport, tip, tport, seq, ack, flags, len(data)) + bytes(data)


def payload_frames(items: Iterable[bytes], limit: int = EXT_MAX_BODY) -> List[bytes]:
    """Pack encoded items into as few payload frames as fit under ``limit``."""
    frames: List[bytes] = []
    part: List[bytes] = [bytes((EXT_PAYLOAD,))]
    size = 1
    for it in items:
        if size + len(it) > limit and size > 1:
            frames.append(ext_frame(b"".join(part)))
            part, size = [bytes((EXT_PAYLOAD,))], 1
        part.append(it)
        size += len(it)
    if size > 1:
        frames.append(ext_frame(b"".join(part)))
    return frames


def decode_body(body: bytes) -> Tuple[int, object]:
    """(kind, value): EXT_ACCEPT -> caps (int); EXT_PAYLOAD -> list of ``Item``.

    Unknown kinds are returned as (kind, body) for the caller to count and skip.
    """
    if not body:
        raise ProtocolError("empty extension frame")
    kind = body[0]
    if kind == EXT_ACCEPT:
        if len(body) != _CAPS.size:
            raise ProtocolError("bad extension accept frame (%d bytes)" % len(body))
        return kind, _CAPS.unpack(body)[1]
    if kind != EXT_PAYLOAD:
        return kind, body
    out: List[Item] = []
    pos = 1
    end = len(body)
    size = ITEM.size
    while pos < end:
        if end - pos < size:
            raise ProtocolError("truncated payload item")
        cip, cport, tip, tport, seq, ack, flags, n = ITEM.unpack_from(body, pos)
        pos += size
        if end - pos < n:
            raise ProtocolError("payload item of %d bytes, %d left" % (n, end - pos))
        out.append((cip, cport, tip, tport, seq, ack, flags, body[pos:pos + n]))
        pos += n
    return kind, out
