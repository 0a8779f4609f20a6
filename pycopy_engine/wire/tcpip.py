"""IPv4 + TCP headers: parse into a ``Segment``, build back into bytes.

One ``struct`` unpack per header; bounds are checked before every read and
anything that does not parse raises ``WireError`` with a reason word.
Addresses are kept as raw network-order ``bytes`` (4 bytes for IPv4) so that
IPv6 (16 bytes) can use the same session keys later.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

from ..errors import WireError

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

IP_HDR = struct.Struct("!BBHHHBBH4s4s")
TCP_HDR = struct.Struct("!HHIIBBHHH")
_TS = struct.Struct("!II")
_U16 = struct.Struct("!H")

OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_OK, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8


class Segment:
    """One TCP segment with the IPv4 fields the engine needs.

    ``plen`` is the payload length; for an intercept record it comes from the
    IP total length while ``payload`` stays empty (records carry headers only).
    """

    __slots__ = (
        "src", "dst", "sport", "dport", "seq", "ack", "flags", "win",
        "opts", "payload", "plen", "ip_id", "ttl", "tos",
    )

    def __init__(self, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
                 flags: int, win: int, opts: bytes = b"", payload: bytes = b"",
                 plen: Optional[int] = None, ip_id: int = 0, ttl: int = 64, tos: int = 0) -> None:
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.win = win
        self.opts = opts
        self.payload = payload
        self.plen = len(payload) if plen is None else plen
        self.ip_id = ip_id
        self.ttl = ttl
        self.tos = tos

    def __repr__(self) -> str:  # for test failures only
        return (f"Segment({ip_str(self.src)}:{self.sport}->{ip_str(self.dst)}:{self.dport} "
                f"{flags_str(self.flags)} seq={self.seq} ack={self.ack} win={self.win} "
                f"plen={self.plen})")


def ip_str(addr: bytes) -> str:
    if len(addr) == 4:
        return "%d.%d.%d.%d" % tuple(addr)
    import ipaddress

    return str(ipaddress.ip_address(addr))


def flags_str(flags: int) -> str:
    return "".join(c for bit, c in ((SYN, "S"), (ACK, "A"), (PSH, "P"), (FIN, "F"), (RST, "R"),
                                    (URG, "U")) if flags & bit) or "."


def parse_ipv4_tcp(buf) -> Segment:
    """Parse an IPv4 packet carrying TCP.  ``buf`` starts at the IP header."""
    n = len(buf)
    if n < 20:
        raise WireError("short IPv4 header: %d bytes" % n, "truncated")
    vihl, tos, tot_len, ip_id, frag, ttl, proto, _c, src, dst = IP_HDR.unpack_from(buf, 0)
    if vihl >> 4 != 4:
        raise WireError("not IPv4 (version %d)" % (vihl >> 4), "not_ipv4")
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        raise WireError("IPv4 header length %d < 20" % ihl, "bad_ihl")
    if proto != 6:
        raise WireError("IP protocol %d is not TCP" % proto, "not_tcp")
    if frag & 0x3FFF:
        raise WireError("IP fragment", "fragment")
    if tot_len == 0:  # some offload paths leave it zero: the buffer is the packet
        tot_len = n
    if tot_len < ihl + 20:
        raise WireError("IPv4 total length %d too small" % tot_len, "bad_length")
    if tot_len > n:
        raise WireError("packet truncated: %d of %d bytes" % (n, tot_len), "truncated")
    sport, dport, seq, ack, off_b, flags, win, _tc, _urg = TCP_HDR.unpack_from(buf, ihl)
    doff = (off_b >> 4) << 2
    if doff < 20 or ihl + doff > tot_len:
        raise WireError("bad TCP data offset %d" % doff, "bad_doff")
    opts = bytes(buf[ihl + 20:ihl + doff]) if doff > 20 else b""
    payload = bytes(buf[ihl + doff:tot_len])
    return Segment(src, dst, sport, dport, seq, ack, flags, win, opts, payload,
                   tot_len - ihl - doff, ip_id, ttl, tos)


_IPTCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")  # both fixed headers: 40 bytes
_PSEUDO = struct.Struct("!HH")


def build_ipv4_tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
                   flags: int, win: int, opts: bytes = b"", payload: bytes = b"",
                   ip_id: int = 0, ttl: int = 64, tos: int = 0, df: bool = True) -> bytes:
    """Build an IPv4+TCP packet with both checksums computed in full.

    ``opts`` must already be padded to a multiple of 4 bytes.  One struct pack
    for both headers and one big-integer sum over pseudo-header + segment.
    """
    olen = len(opts)
    if olen & 3 or olen > 40:
        raise WireError("TCP options length %d is not a multiple of 4 up to 40" % olen, "bad_opts")
    doff = 20 + olen
    seg_len = doff + len(payload)
    hdr = _IPTCP.pack(0x45, tos, 20 + seg_len, ip_id & 0xFFFF, 0x4000 if df else 0, ttl, 6, 0,
                      src, dst, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, doff << 2,
                      flags, win & 0xFFFF, 0, 0)
    body = hdr[20:] + opts + payload
    n = int.from_bytes(src + dst + _PSEUDO.pack(6, seg_len) + body
                       + (b"\0" if seg_len & 1 else b""), "big") % 0xFFFF
    tcs = 0xFFFF - n if n else 0
    n = int.from_bytes(hdr[:20], "big") % 0xFFFF
    ics = 0xFFFF - n if n else 0
    return b"".join((hdr[:10], _U16.pack(ics), hdr[12:36], _U16.pack(tcs), hdr[38:40],
                     opts, payload))


# ---------------------------------------------------------------- TCP options


class TcpOptions:
    __slots__ = ("mss", "wscale", "sack_ok", "ts_val", "ts_ecr")

    def __init__(self) -> None:
        self.mss: Optional[int] = None
        self.wscale: Optional[int] = None
        self.sack_ok = False
        self.ts_val: Optional[int] = None
        self.ts_ecr: Optional[int] = None


def parse_options(opts: bytes) -> TcpOptions:
    """Decode MSS, window scale, SACK-permitted and timestamps; raise on overruns."""
    out = TcpOptions()
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise WireError("TCP option %d runs past the header" % kind, "bad_opts")
        length = opts[i + 1]
        if length < 2 or i + length > n:
            raise WireError("TCP option %d has bad length %d" % (kind, length), "bad_opts")
        if kind == OPT_MSS and length == 4:
            out.mss = _U16.unpack_from(opts, i + 2)[0]
        elif kind == OPT_WSCALE and length == 3:
            out.wscale = min(opts[i + 2], 14)
        elif kind == OPT_SACK_OK and length == 2:
            out.sack_ok = True
        elif kind == OPT_TS and length == 10:
            out.ts_val, out.ts_ecr = _TS.unpack_from(opts, i + 2)
        i += length
    return out


def find_ts(opts: bytes) -> Optional[Tuple[int, int]]:
    """(TSval, TSecr) of a segment's options, or None.  Fast path for NOP NOP TS."""
    if len(opts) >= 12 and opts[0] == 1 and opts[1] == 1 and opts[2] == 8 and opts[3] == 10:
        return _TS.unpack_from(opts, 4)  # type: ignore[return-value]
    if not opts:
        return None
    try:
        o = parse_options(opts)
    except WireError:
        return None
    if o.ts_val is None:
        return None
    return o.ts_val, o.ts_ecr  # type: ignore[return-value]


def ts_option(val: int, ecr: int) -> bytes:
    """NOP, NOP, timestamps: the usual 12-byte layout."""
    return b"\x01\x01\x08\x0a" + _TS.pack(val & 0xFFFFFFFF, ecr & 0xFFFFFFFF)


def syn_options(mss: int, wscale: Optional[int] = None, sack_ok: bool = False,
                ts: Optional[Tuple[int, int]] = None) -> bytes:
    """Options for a fabricated SYN, padded to 4 bytes."""
    out = bytearray(b"\x02\x04" + _U16.pack(mss & 0xFFFF))
    if sack_ok:
        out += b"\x04\x02" if ts else b"\x01\x01\x04\x02"
    if ts:
        out += (b"\x08\x0a" + _TS.pack(*ts)) if sack_ok else ts_option(*ts)
    if wscale is not None:
        out += b"\x01\x03\x03" + bytes((wscale,))
    return bytes(out)


def seq_lt(a: int, b: int) -> bool:
    """a < b in 32-bit sequence space (RFC 1982 style)."""
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in sequence space."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d > 0x7FFFFFFF else d
