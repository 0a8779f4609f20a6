"""The tcpcopy <-> intercept control channel, byte-exact with TCPCopy 1.0.

tcpcopy -> intercept: 14-byte records ``msg_clt_t`` (client ip, client port,
type, target ip, target port, network order).  The first one on a connection
is the hello: all zero but ``type`` = protocol version 6.

intercept -> tcpcopy: 64-byte response records (the first 20 bytes of the
response's IPv4 header, the 20-byte fixed TCP header, the first 24 bytes of
TCP options zero-padded).  Combined framing (the default) prefixes each write
with a 2-byte count of at most 16 records; uncombined framing sends bare
records back to back.
"""

from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional, Tuple

from ..errors import ProtocolError, WireError
from .tcpip import IP_HDR, TCP_HDR, Segment

VERSION = 6
MSG_CLIENT_ADD = 1
MSG_CLIENT_DEL = 2
CLT = struct.Struct("!4sHH4sH")
CLT_SIZE = CLT.size  # 14
RECORD_SIZE = 64
PAYLOAD_RECORD_SIZE = 192
COMB_MAX = 16
DEFAULT_PORT = 36524

HELLO = CLT.pack(b"\0\0\0\0", 0, VERSION, b"\0\0\0\0", 0)

# pycopy's optional authentication (pycopy to pycopy only): right after the
# hello, a record of type MSG_AUTH whose client-port field gives the length of
# what follows: 8-byte time (ms), 8-byte nonce, HMAC-SHA256 over both.  A
# tcpcopy without a secret never sends it, so C peers are unaffected.
MSG_AUTH = 0x5059
AUTH_MAGIC = b"PYCP"
AUTH_BODY = struct.Struct("!Q8s32s")
AUTH_CONTEXT = b"pycopy control auth v1"
# pycopy's negotiated extension (pycopy to pycopy only, wire/control_ext.py):
# a 14-byte record of type MSG_EXT whose client ip is EXT_MAGIC and whose
# client port carries the capability bits asked for.  It has no body, so a C
# intercept reads it as one record of an unknown type.
MSG_EXT = 0x5058
EXT_MAGIC = b"PYCX"
_COUNT = struct.Struct("!H")
_ZERO24 = bytes(24)


class ClientMsg(NamedTuple):
    clt_ip: bytes
    clt_port: int
    type: int
    target_ip: bytes
    target_port: int


def encode_client_add(clt_ip: bytes, clt_port: int, target_ip: bytes, target_port: int) -> bytes:
    return CLT.pack(clt_ip, clt_port, MSG_CLIENT_ADD, target_ip, target_port)


def auth_digest(secret: bytes, millis: int, nonce: bytes) -> bytes:
    import hashlib
    import hmac

    return hmac.new(secret, AUTH_CONTEXT + millis.to_bytes(8, "big") + nonce,
                    hashlib.sha256).digest()


def encode_auth(secret: bytes, millis: int, nonce: bytes) -> bytes:
    body = AUTH_BODY.pack(millis, nonce, auth_digest(secret, millis, nonce))
    return CLT.pack(AUTH_MAGIC, len(body), MSG_AUTH, b"\0\0\0\0", 1) + body


def check_auth(secret: bytes, body: bytes, now_millis: int, max_skew_ms: int = 300_000) -> str:
    """'' if ``body`` proves ``secret``, else the reason it does not."""
    import hmac

    if len(body) != AUTH_BODY.size:
        return "bad authentication record"
    millis, nonce, digest = AUTH_BODY.unpack(body)
    if not hmac.compare_digest(digest, auth_digest(secret, millis, nonce)):
        return "wrong secret"
    if abs(now_millis - millis) > max_skew_ms:
        return "authentication too old or clocks %d s apart" % ((now_millis - millis) // 1000)
    return ""


def encode_client_del(clt_ip: bytes, clt_port: int, target_ip: bytes, target_port: int) -> bytes:
    return CLT.pack(clt_ip, clt_port, MSG_CLIENT_DEL, target_ip, target_port)


class ClientMsgDecoder:
    """intercept's reader of one tcpcopy connection: hello first, then records.

    ``feed`` returns decoded messages; the hello is returned as a message whose
    ``type`` is the peer's version.  A hello with a non-zero address (a pre-1.0
    client) raises ProtocolError; another version is accepted and reported
    through ``version`` so the caller can warn, as the C intercept does.
    """

    __slots__ = ("_buf", "version", "auth", "count", "ext")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.version: Optional[int] = None
        self.auth: Optional[bytes] = None  # the body of a pycopy MSG_AUTH, once read
        self.count = 0
        self.ext = 0  # capability bits a pycopy tcpcopy asked for (MSG_EXT), 0 = none

    def feed(self, data: bytes) -> List[ClientMsg]:
        buf = self._buf
        buf += data
        out: List[ClientMsg] = []
        end = len(buf)
        pos = 0
        while end - pos >= CLT_SIZE:
            msg = ClientMsg(*CLT.unpack_from(buf, pos))
            if self.version is None:
                if msg.clt_ip != b"\0\0\0\0" or msg.clt_port != 0:
                    raise ProtocolError("client too old for intercept: first message is not a hello")
                self.version = msg.type
            elif msg.type == MSG_AUTH and msg.clt_ip == AUTH_MAGIC:
                if self.count != 1:
                    raise ProtocolError("authentication record after other messages")
                if msg.clt_port > 1024:
                    raise ProtocolError("authentication record of %d bytes" % msg.clt_port)
                if end - pos < CLT_SIZE + msg.clt_port:
                    break
                self.auth = bytes(buf[pos + CLT_SIZE:pos + CLT_SIZE + msg.clt_port])
                pos += msg.clt_port
            elif msg.type == MSG_EXT and msg.clt_ip == EXT_MAGIC:
                self.ext = msg.clt_port
            elif msg.type not in (MSG_CLIENT_ADD, MSG_CLIENT_DEL):
                raise ProtocolError("unknown control message type %d" % msg.type)
            pos += CLT_SIZE
            self.count += 1
            out.append(msg)
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def make_record(pkt, size: int = RECORD_SIZE) -> bytes:
    """The response record for one captured IPv4/TCP packet (``pkt`` starts at IP).

    As the C intercept: IP header bytes 0-19 (IP options are not copied,
    ``ihl`` is kept), then the fixed TCP header, then up to 24 option bytes.
    Only ``size`` = 64 (no payload) is produced; checksums are copied as they are.
    """
    n = len(pkt)
    if n < 20:
        raise WireError("short IPv4 header: %d bytes" % n, "truncated")
    ihl = (pkt[0] & 0x0F) << 2
    if pkt[0] >> 4 != 4 or ihl < 20:
        raise WireError("not an IPv4 header", "not_ipv4")
    if n < ihl + 20:
        raise WireError("TCP header truncated", "truncated")
    doff = (pkt[ihl + 12] >> 4) << 2
    if doff < 20:
        raise WireError("bad TCP data offset %d" % doff, "bad_doff")
    olen = min(doff, 44) - 20
    end = ihl + 20 + olen
    if n < end:
        raise WireError("TCP options truncated", "truncated")
    rec = bytes(pkt[0:20]) + bytes(pkt[ihl:end])
    return rec + _ZERO24[: RECORD_SIZE - len(rec)] if len(rec) < RECORD_SIZE else rec


def record_key(rec) -> Tuple[bytes, int, bytes, int]:
    """(client ip, client port, target ip, target port) of a record or response packet header."""
    ihl = (rec[0] & 0x0F) << 2
    return (bytes(rec[16:20]), (rec[ihl + 2] << 8) | rec[ihl + 3],
            bytes(rec[12:16]), (rec[ihl] << 8) | rec[ihl + 1])


def parse_record(rec) -> Segment:
    """Decode a 64-byte response record into a header-only ``Segment``.

    The TCP header always starts at byte 20 (intercept copies only 20 bytes of
    IP header); the payload length comes from the IP total length, which may
    exceed the MTU (offload super-packets) and is taken as it is.
    """
    if len(rec) < 40:
        raise WireError("short response record: %d bytes" % len(rec), "truncated")
    vihl, tos, tot_len, ip_id, _f, ttl, proto, _c, src, dst = IP_HDR.unpack_from(rec, 0)
    if vihl >> 4 != 4 or proto != 6:
        raise WireError("response record is not IPv4/TCP", "not_tcp")
    ihl = (vihl & 0x0F) << 2
    sport, dport, seq, ack, off_b, flags, win, _tc, _urg = TCP_HDR.unpack_from(rec, 20)
    doff = (off_b >> 4) << 2
    if doff < 20 or ihl < 20:
        raise WireError("bad header length in response record", "bad_doff")
    plen = tot_len - ihl - doff
    if plen < 0:
        raise WireError("response record total length %d too small" % tot_len, "bad_length")
    olen = min(doff - 20, len(rec) - 40, 24)
    return Segment(src, dst, sport, dport, seq, ack, flags, win,
                   bytes(rec[40:40 + olen]), b"", plen, ip_id, ttl, tos)


def encode_frame(records: List[bytes]) -> bytes:
    """Combined framing: count then records (count must be 1..16)."""
    return _COUNT.pack(len(records)) + b"".join(records)


class FrameDecoder:
    """tcpcopy's reader of one intercept connection (a byte stream).

    With ``ext`` (this tcpcopy asked for the pycopy extension), a frame that
    starts with ``EXT_FRAME`` (0xFF50: never a count <= 16, never an IPv4
    header) is an extension frame: its body goes to ``ext_frames``.
    """

    __slots__ = ("_buf", "combined", "record_size", "max_count", "ext", "ext_frames")

    def __init__(self, combined: bool = True, record_size: int = RECORD_SIZE,
                 max_count: int = COMB_MAX, ext: bool = False) -> None:
        self._buf = bytearray()
        self.combined = combined
        self.record_size = record_size
        self.max_count = max_count
        self.ext = ext
        self.ext_frames: List[bytes] = []

    def feed(self, data: bytes) -> List[bytes]:
        buf = self._buf
        buf += data
        size = self.record_size
        out: List[bytes] = []
        pos = 0
        end = len(buf)
        if self.ext:
            return self._feed_ext(buf, size, out)
        if self.combined:
            while end - pos >= 2:
                count = (buf[pos] << 8) | buf[pos + 1]
                if count > self.max_count:
                    hint = (" (0x%04x looks like an IPv4 header: the peer sends uncombined"
                            " records)" % count) if buf[pos] >> 4 == 4 else ""
                    raise ProtocolError("num:%d > threshold %d%s" % (count, self.max_count, hint))
                need = 2 + count * size
                if end - pos < need:
                    break
                p = pos + 2
                for _ in range(count):
                    out.append(bytes(buf[p:p + size]))
                    p += size
                pos += need
        else:
            while end - pos >= size:
                out.append(bytes(buf[pos:pos + size]))
                pos += size
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _feed_ext(self, buf: bytearray, size: int, out: List[bytes]) -> List[bytes]:
        pos = 0
        end = len(buf)
        ext = self.ext_frames
        while end - pos >= 2:
            if buf[pos] == EXT_FRAME_B0 and buf[pos + 1] == EXT_FRAME_B1:
                if end - pos < EXT_HEAD.size:
                    break
                n = EXT_HEAD.unpack_from(buf, pos)[1]
                if n > EXT_MAX_BODY:
                    raise ProtocolError("extension frame of %d bytes" % n)
                if end - pos < EXT_HEAD.size + n:
                    break
                p = pos + EXT_HEAD.size
                ext.append(bytes(buf[p:p + n]))
                pos = p + n
                continue
            if not self.combined:
                if end - pos < size:
                    break
                out.append(bytes(buf[pos:pos + size]))
                pos += size
                continue
            count = (buf[pos] << 8) | buf[pos + 1]
            if count > self.max_count:
                raise ProtocolError("num:%d > threshold %d" % (count, self.max_count))
            need = 2 + count * size
            if end - pos < need:
                break
            p = pos + 2
            for _ in range(count):
                out.append(bytes(buf[p:p + size]))
                p += size
            pos += need
        if pos:
            del buf[:pos]
        return out


# intercept -> tcpcopy extension frames (only to a tcpcopy that sent MSG_EXT):
# 0xFF 0x50, a 4-byte body length, the body (wire/control_ext.py).
EXT_HEAD = struct.Struct("!HI")
EXT_FRAME_B0 = 0xFF
EXT_FRAME_B1 = 0x50
EXT_MAX_BODY = 1 << 20
