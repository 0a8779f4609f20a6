"""Mutated and truncated capture files: the reader never raises past open, never loops."""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycopy_engine.errors import ConfigError
from pycopy_engine.io.pcapfile import PcapReader, PcapWriter
from pycopy_engine.wire.tcpip import ACK, PSH, build_ipv4_tcp

PKTS = [
    build_ipv4_tcp(b"\x0a\xe7\x03\x0a", b"\x0a\xe7\x03\x0c", 40000 + i, 80, i, 0, PSH | ACK,
                   100, payload=b"x" * (i * 7))
    for i in range(12)
]  # fmt: skip


def pcap_bytes(tmp: Path, linktype: int) -> bytes:
    path = tmp / "base.pcap"
    with PcapWriter(str(path), linktype=linktype) as w:
        for i, p in enumerate(PKTS):
            frame = {1: b"\2" * 12 + b"\x08\x00", 113: b"\0" * 14 + b"\x08\x00",
                     101: b"", 0: b"\2\0\0\0"}[linktype] + p  # fmt: skip
            w.write(1000.0 + i / 10, frame)
    return path.read_bytes()


def pcapng_bytes() -> bytes:
    out = b""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    out += block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", 101, 0, 0) + struct.pack("<HHB3xHH", 9, 1, 9, 0, 0))
    for i, p in enumerate(PKTS):
        out += block(6, struct.pack("<IIIII", 0, 0, i * 1000, len(p), len(p)) + p)
    return out


def check(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        reader = PcapReader(str(path), chunk=97)
    except ConfigError:
        return
    with reader:
        got = []
        try:
            for ts, pkt in reader:
                assert isinstance(ts, float) and isinstance(pkt, bytes) and pkt[0] >> 4 in (4, 6)
                got.append(pkt)
                assert len(got) <= len(data)  # no endless loop
        except ConfigError as e:  # a pcapng interface block names an unknown link type
            assert "unsupported link type" in str(e)
        assert reader.packets == len(got)
        if reader.stopped_at is not None:
            offset, reason = reader.stopped_at
            assert 0 <= offset <= len(data) and reason


mutations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255)),
    max_size=8,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["eth", "sll", "raw", "null", "ng"]),
    flips=mutations,
    cut=st.integers(min_value=0, max_value=4000),
)
def test_mutated_files_never_crash(tmp_path: Path, kind: str, flips: list, cut: int) -> None:
    if kind == "ng":
        base = pcapng_bytes()
    else:
        base = pcap_bytes(tmp_path, {"eth": 1, "sll": 113, "raw": 101, "null": 0}[kind])
    data = bytearray(base[: max(cut, 0)] if cut < len(base) else base)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    check(tmp_path / "m.cap", bytes(data))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=600))
def test_random_bytes_after_a_valid_header(tmp_path: Path, data: bytes) -> None:
    check(tmp_path / "r.pcap", struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + data)
    check(tmp_path / "r.pcapng", pcapng_bytes()[:48] + data)


def test_every_truncation_point_yields_a_prefix(tmp_path: Path) -> None:
    base = pcap_bytes(tmp_path, 1)
    for cut in range(24, len(base) + 1):
        path = tmp_path / "t.pcap"
        path.write_bytes(base[:cut])
        with PcapReader(str(path), chunk=50) as r:
            got = [p for _, p in r]
            assert got == PKTS[: len(got)]
            assert (r.stopped_at is None) == _ends_clean(base, cut)


def _ends_clean(base: bytes, cut: int) -> bool:
    pos = 24
    while pos < cut:
        caplen = struct.unpack_from("<I", base, pos + 8)[0]
        pos += 16 + caplen
    return pos == cut
