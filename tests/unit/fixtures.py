"""Read the golden captures of the C tools (../shared/fixtures/tcpcopy-1.0)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

FIXTURES = Path(os.environ.get(
    "PYCOPY_FIXTURES",
    Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "tcpcopy-1.0"))


def need(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {path} not present")
    return path


def ip_packets(name: str) -> Iterator[Tuple[float, bytes]]:
    """(timestamp, IPv4 packet) of a classic Ethernet pcap, read with struct only."""
    data = need(name).read_bytes()
    magic = data[:4]
    endian = "<" if magic == b"\xd4\xc3\xb2\xa1" else ">"
    rec = struct.Struct(endian + "IIII")
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, caplen, _len = rec.unpack_from(data, pos)
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        if frame[12:14] == b"\x08\x00":
            yield sec + usec / 1e6, frame[14:]


def tcp_streams(name: str) -> Dict[Tuple[str, int, str, int], bytes]:
    """Payload bytes of each TCP direction, in sequence order (no reordering needed here)."""
    streams: Dict[Tuple[str, int, str, int], List[Tuple[int, bytes]]] = {}
    for _ts, pkt in ip_packets(name):
        ihl = (pkt[0] & 15) * 4
        tot = struct.unpack_from("!H", pkt, 2)[0]
        sport, dport, seq = struct.unpack_from("!HHI", pkt, ihl)
        doff = (pkt[ihl + 12] >> 4) * 4
        payload = pkt[ihl + doff:tot]
        key = (".".join(map(str, pkt[12:16])), sport, ".".join(map(str, pkt[16:20])), dport)
        if payload:
            streams.setdefault(key, []).append((seq, payload))
    out = {}
    for key, parts in streams.items():
        seen = set()
        data = b""
        for seq, payload in sorted(parts, key=lambda p: p[0]):
            if seq in seen:
                continue
            seen.add(seq)
            data += payload
        out[key] = data
    return out
