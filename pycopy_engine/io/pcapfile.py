"""Capture files: read pcap and pcapng, write pcap.

``PcapReader(path)`` yields ``(timestamp, ip_packet)`` for every IPv4/IPv6
packet in the file, whatever the link layer (Ethernet with stacked VLAN tags,
Linux cooked SLL/SLL2, raw IP, BSD loopback/null).  One
``struct.unpack_from`` per record header; the file is read in large chunks.

A truncated or corrupt file yields everything valid, then stops and records
where in ``reader.stopped_at = (file_offset, reason)``.  Packets cut by the
snap length (caplen < len) are counted in ``reader.truncated`` and skipped
unless ``keep_truncated=True``; non-IP frames are counted in ``reader.non_ip``.
An unknown link type raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from pycopy_engine.errors import ConfigError

CHUNK = 1 << 20
MAX_CAPLEN = 262144  # Wireshark's WTAP_MAX_PACKET_SIZE_STANDARD
MAX_BLOCK = 16 << 20

# fmt: off
LINKTYPE_NAMES: dict[int, str] = {
    0: "NULL", 1: "EN10MB", 6: "IEEE802_5", 9: "PPP", 12: "RAW", 14: "RAW",
    50: "PPP_HDLC", 101: "RAW", 104: "C_HDLC", 105: "IEEE802_11", 108: "LOOP",
    113: "LINUX_SLL", 127: "IEEE802_11_RADIO", 187: "BLUETOOTH_HCI_H4",
    189: "USB_LINUX", 197: "ERF", 220: "USB_LINUX_MMAPPED", 228: "IPV4", 229: "IPV6",
    276: "LINUX_SLL2",
}
# fmt: on
LINKTYPE_NAMES.update({147 + i: f"USER{i}" for i in range(16)})

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_NULL = 0
LINKTYPE_LOOP = 108
_RAW_TYPES = frozenset((12, 14, 101, 228, 229))
SUPPORTED_LINKTYPES = frozenset((0, 1, 108, 113, 276)) | _RAW_TYPES

_VLAN = frozenset((0x8100, 0x88A8, 0x9100))
_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_U16 = struct.Struct("!H")
_U32LE = struct.Struct("<I")

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D


def linktype_name(linktype: int) -> str:
    return LINKTYPE_NAMES.get(linktype, "unknown")


def _unsupported(linktype: int, path: str) -> ConfigError:
    return ConfigError(
        f"unsupported link type {linktype} ({linktype_name(linktype)}) in {path}; "
        "supported: Ethernet (1), Linux cooked SLL (113) and SLL2 (276), "
        "raw IP (12, 14, 101, 228, 229), loopback/null (0, 108)"
    )


def l3_offset(linktype: int, buf: bytes, start: int, end: int) -> int:
    """Offset of the IP header inside ``buf[start:end]``, or -1 if not IPv4/IPv6."""
    if linktype == 1:
        off = start + 14
        if off > end:
            return -1
        etype = (buf[start + 12] << 8) | buf[start + 13]
    elif linktype in _RAW_TYPES:
        off = start
        etype = 0
    elif linktype == 113:
        off = start + 16
        if off > end:
            return -1
        etype = (buf[start + 14] << 8) | buf[start + 15]
    elif linktype == 276:
        off = start + 20
        if off > end:
            return -1
        etype = (buf[start] << 8) | buf[start + 1]
    elif linktype == 0 or linktype == 108:
        off = start + 4
        if off > end:
            return -1
        fam = _U32LE.unpack_from(buf, start)[0]
        if fam > 0xFFFF:  # written in the other byte order
            fam = int.from_bytes(fam.to_bytes(4, "little"), "big")
        if fam == 2:
            etype = 0x0800
        elif fam in _AF_INET6:
            etype = 0x86DD
        else:
            return -1
    else:
        raise ValueError(linktype)
    while etype in _VLAN and off + 4 <= end:
        etype = (buf[off + 2] << 8) | buf[off + 3]
        off += 4
    if off >= end:
        return -1
    ver = buf[off] >> 4
    if etype == 0:
        pass
    elif (etype == 0x0800 and ver != 4) or (etype == 0x86DD and ver != 6):
        return -1
    elif etype != 0x0800 and etype != 0x86DD:
        return -1
    if ver == 4:
        return off if end - off >= 20 else -1
    if ver == 6:
        return off if end - off >= 40 else -1
    return -1


def ip_end(buf: bytes, off: int, end: int) -> int:
    """Cut link-layer padding: the end of the IP packet per its length field."""
    if buf[off] >> 4 == 4:
        tot = _U16.unpack_from(buf, off + 2)[0]
        if 20 <= tot < end - off:
            return off + tot
    else:
        plen = _U16.unpack_from(buf, off + 4)[0]
        if 0 < plen and plen + 40 < end - off:
            return off + 40 + plen
    return end


class PcapReader:
    """Iterate ``(timestamp, ip_packet_bytes)`` over a pcap or pcapng file."""

    def __init__(self, path: str, keep_truncated: bool = False, chunk: int = CHUNK) -> None:
        self.path = str(path)
        self.keep_truncated = keep_truncated
        self.chunk = chunk
        self.records = 0  # capture records read (packet blocks for pcapng)
        self.packets = 0  # IP packets yielded
        self.truncated = 0  # caplen < len
        self.non_ip = 0  # frames that carry no IPv4/IPv6 packet
        self.stopped_at: tuple[int, str] | None = None
        self.linktypes: list[int] = []
        self._f: BinaryIO = open(self.path, "rb")
        self._buf = b""
        self._pos = 0
        self._base = 0
        self._iterated = False
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise

    # -- buffer ---------------------------------------------------------
    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available at ``_pos``; False at end of file."""
        have = len(self._buf) - self._pos
        if have >= need:
            return True
        self._base += self._pos
        self._buf = self._buf[self._pos :] + self._f.read(max(self.chunk, need - have))
        self._pos = 0
        while len(self._buf) < need:
            more = self._f.read(need - len(self._buf))
            if not more:
                return False
            self._buf += more
        return True

    def _stop(self, offset: int, reason: str) -> None:
        self.stopped_at = (offset, reason)

    # -- header ---------------------------------------------------------
    def _open(self) -> None:
        if not self._fill(4):
            raise ConfigError(f"{self.path} is empty or too short to be a capture file")
        magic_be = struct.unpack_from(">I", self._buf, 0)[0]
        if magic_be == PCAPNG_SHB:
            self.format = "pcapng"
            self._ifaces: list[tuple[int, int, int, int]] = []
            return
        magic_le = struct.unpack_from("<I", self._buf, 0)[0]
        if magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            endian, magic = ">", magic_be
        elif magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            endian, magic = "<", magic_le
        else:
            raise ConfigError(f"{self.path} is not a pcap or pcapng file (magic 0x{magic_be:08x})")
        if not self._fill(24):
            raise ConfigError(f"{self.path}: pcap file header truncated")
        self.format = "pcap"
        self.nanosecond = magic == PCAP_MAGIC_NS
        _, vmaj, vmin, _, _, snaplen, linktype = struct.unpack_from(
            endian + "IHHiIII", self._buf, 0
        )
        self.version = (vmaj, vmin)
        self.snaplen = snaplen
        linktype &= 0xFFFF  # upper bits: FCS length flags
        if linktype not in SUPPORTED_LINKTYPES:
            raise _unsupported(linktype, self.path)
        self.linktype = linktype
        self.linktypes = [linktype]
        self._rec = struct.Struct(endian + "IIII")
        self._pos = 24

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        if self._iterated:
            raise RuntimeError("a PcapReader can be iterated only once")
        self._iterated = True
        return self._iter_and_close()

    def _iter_and_close(self) -> Iterator[tuple[float, bytes]]:
        """The file is closed when iteration ends (``stopped_at`` etc. stay readable)."""
        try:
            yield from self._iter_pcap() if self.format == "pcap" else self._iter_pcapng()
        finally:
            self.close()

    # -- pcap -------------------------------------------------------------
    def _iter_pcap(self) -> Iterator[tuple[float, bytes]]:
        unpack = self._rec.unpack_from
        div = 1e9 if self.nanosecond else 1e6
        linktype = self.linktype
        limit = max(self.snaplen, MAX_CAPLEN)
        keep = self.keep_truncated
        buf, pos = self._buf, self._pos
        while True:
            if len(buf) - pos < 16:
                self._pos = pos
                ok = self._fill(16)
                buf, pos = self._buf, self._pos
                if not ok:
                    if len(buf) > pos:
                        self._stop(
                            self._base + pos,
                            f"truncated record header ({len(buf) - pos} of 16 bytes)",
                        )
                    return
            sec, frac, caplen, wirelen = unpack(buf, pos)
            if caplen > limit:
                self._stop(self._base + pos, f"corrupt record: caplen {caplen} > {limit}")
                return
            start = pos + 16
            end = start + caplen
            if end > len(buf):
                self._pos = pos
                ok = self._fill(16 + caplen)
                buf, pos = self._buf, self._pos
                if not ok:
                    self._stop(
                        self._base + pos,
                        f"truncated packet data ({len(buf) - pos - 16} of {caplen} bytes)",
                    )
                    return
                start = pos + 16
                end = start + caplen
            pos = end
            self.records += 1
            if caplen < wirelen:
                self.truncated += 1
                if not keep:
                    continue
            off = l3_offset(linktype, buf, start, end)
            if off < 0:
                self.non_ip += 1
                continue
            self.packets += 1
            yield sec + frac / div, buf[off : ip_end(buf, off, end)]

    # -- pcapng -----------------------------------------------------------
    def _iter_pcapng(self) -> Iterator[tuple[float, bytes]]:
        keep = self.keep_truncated
        endian = ">"
        hdr = struct.Struct(">II")
        ifaces = self._ifaces
        last_ts = 0.0
        while True:
            if not self._fill(8):
                if len(self._buf) > self._pos:
                    self._stop(self._base + self._pos, "truncated block header")
                return
            buf, pos = self._buf, self._pos
            offset = self._base + pos
            btype, blen = hdr.unpack_from(buf, pos)
            if btype == PCAPNG_SHB:
                if not self._fill(12):
                    self._stop(offset, "truncated section header block")
                    return
                buf, pos = self._buf, self._pos
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                elif bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                else:
                    self._stop(offset, "corrupt section header block (bad byte-order magic)")
                    return
                hdr = struct.Struct(endian + "II")
                blen = hdr.unpack_from(buf, pos)[1]
                ifaces.clear()
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                self._stop(offset, f"corrupt block length {blen} (block type 0x{btype:x})")
                return
            if not self._fill(blen):
                self._stop(
                    offset,
                    f"truncated block (type 0x{btype:x}, "
                    f"{len(self._buf) - self._pos} of {blen} bytes)",
                )
                return
            buf, pos = self._buf, self._pos
            self._pos = pos + blen
            if struct.unpack_from(endian + "I", buf, pos + blen - 4)[0] != blen:
                self._stop(offset, "corrupt block: trailing length differs")
                return
            if btype == 1:
                iface = self._parse_idb(buf, pos, blen, endian, offset)
                if iface is None:
                    return
                ifaces.append(iface)
                self.linktypes.append(iface[0])
                continue
            if btype == 6 or btype == 2:
                if btype == 6:
                    ifid, hi, lo, caplen, wirelen = struct.unpack_from(
                        endian + "IIIII", buf, pos + 8
                    )
                else:
                    ifid, _, hi, lo, caplen, wirelen = struct.unpack_from(
                        endian + "HHIIII", buf, pos + 8
                    )
                start = pos + 28
            elif btype == 3:
                if not ifaces:
                    self._stop(offset, "simple packet block before any interface block")
                    return
                wirelen = struct.unpack_from(endian + "I", buf, pos + 8)[0]
                ifid, hi, lo = 0, -1, 0
                caplen = min(wirelen, blen - 16)
                if ifaces[0][3]:
                    caplen = min(caplen, ifaces[0][3])
                start = pos + 12
            else:
                continue  # name resolution, statistics, custom blocks...
            if ifid >= len(ifaces):
                self._stop(offset, f"packet on undefined interface {ifid}")
                return
            end = start + caplen
            if end > pos + blen - 4:
                self._stop(offset, f"corrupt packet block: caplen {caplen} exceeds block")
                return
            linktype, div, tsoff, _ = ifaces[ifid]
            if linktype not in SUPPORTED_LINKTYPES:
                raise _unsupported(linktype, self.path)
            ts = last_ts if hi < 0 else ((hi << 32) | lo) / div + tsoff
            last_ts = ts
            self.records += 1
            if caplen < wirelen:
                self.truncated += 1
                if not keep:
                    continue
            off = l3_offset(linktype, buf, start, end)
            if off < 0:
                self.non_ip += 1
                continue
            self.packets += 1
            yield ts, buf[off : ip_end(buf, off, end)]

    def _parse_idb(
        self, buf: bytes, pos: int, blen: int, endian: str, offset: int
    ) -> tuple[int, int, int, int] | None:
        if blen < 20:
            self._stop(offset, "corrupt interface description block")
            return None
        linktype, _, snaplen = struct.unpack_from(endian + "HHI", buf, pos + 8)
        div, tsoff = 10**6, 0
        opt, end = pos + 16, pos + blen - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(endian + "HH", buf, opt)
            if code == 0:
                break
            val = opt + 4
            if val + olen > end:
                self._stop(offset, "corrupt interface option")
                return None
            if code == 9 and olen >= 1:
                res = buf[val]
                div = (1 << (res & 0x7F)) if res & 0x80 else 10**res
            elif code == 14 and olen >= 8:
                tsoff = struct.unpack_from(endian + "q", buf, val)[0]
            opt = val + olen + (-olen % 4)
        return linktype, div, tsoff, snaplen

    # -- lifecycle --------------------------------------------------------
    def close(self) -> None:
        self._f.close()
        self._buf = b""

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_packets(path: str) -> list[tuple[float, bytes]]:
    """Every IP packet of a capture file (convenience for tests and tools)."""
    with PcapReader(path) as reader:
        return list(reader)


class PcapWriter:
    """Write a classic pcap file (microsecond or nanosecond timestamps)."""

    def __init__(
        self,
        dest: str | BinaryIO,
        linktype: int = LINKTYPE_RAW,
        snaplen: int = MAX_CAPLEN,
        nanosecond: bool = False,
    ) -> None:
        self._own = isinstance(dest, str)
        self._f: BinaryIO = open(dest, "wb") if isinstance(dest, str) else dest
        self._ns = nanosecond
        self._snaplen = snaplen
        self._rec = struct.Struct("<IIII")
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        self._f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts: float, data: bytes, wirelen: int | None = None) -> None:
        sec = int(ts)
        scale = 10**9 if self._ns else 10**6
        frac = min(int(round((ts - sec) * scale)), scale - 1)
        orig = len(data) if wirelen is None else wirelen
        data = data[: self._snaplen]
        self._f.write(self._rec.pack(sec, frac, len(data), max(orig, len(data))))
        self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._own:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
