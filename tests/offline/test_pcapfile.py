"""pcap/pcapng reading in every supported link type, against scapy-written files."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Padding, Raw
from scapy.utils import PcapNgWriter
from scapy.utils import PcapWriter as ScapyPcapWriter

from pycopy_engine.errors import ConfigError
from pycopy_engine.io.pcapfile import PcapReader, PcapWriter, read_packets

# the golden captures live in ../shared beside the repository (also in CI's clone)
FIXTURES = Path(
    os.environ.get(
        "PYCOPY_FIXTURES",
        Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "tcpcopy-1.0",
    )
)


def ip_packets() -> list:
    pkts = []
    for i in range(5):
        pkts.append(
            IP(src="10.231.3.10", dst="10.231.3.11", id=100 + i)
            / TCP(sport=40000 + i, dport=80, seq=1000 * i, flags="PA")
            / (b"GET /%d HTTP/1.1\r\n\r\n" % i)
        )
    pkts.append(IPv6(src="fd00::10", dst="fd00::11") / TCP(sport=5555, dport=80, flags="S"))
    return pkts


def scapy_write(path: Path, frames: list, linktype: int, nano: bool = False) -> None:
    w = ScapyPcapWriter(str(path), linktype=linktype, nano=nano, sync=True)
    for i, f in enumerate(frames):
        f.time = 1700000000 + i * 0.25 + 0.000123
        w.write(f)
    w.close()


FRAMERS = {
    "ethernet": (1, lambda p: Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p),
    "vlan": (1, lambda p: Ether() / Dot1Q(vlan=7) / p),
    "qinq": (1, lambda p: Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=7) / p),
    "sll": (113, lambda p: CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6) / p),
    "sll2": (276, lambda p: CookedLinuxV2(pkttype=0, lladdrtype=1, lladdrlen=6) / p),
    "raw101": (101, lambda p: p),
    "raw12": (12, lambda p: p),
    "raw14": (14, lambda p: p),
    "null": (0, lambda p: Loopback(type=2 if p.version == 4 else 24) / p),
    "loop_be": (108, lambda p: struct.pack("!I", 2 if p.version == 4 else 24) / p),
}


@pytest.mark.parametrize("name", sorted(FRAMERS))
@pytest.mark.parametrize("nano", [False, True])
def test_every_link_type_yields_the_ip_packets(tmp_path: Path, name: str, nano: bool) -> None:
    linktype, frame = FRAMERS[name]
    pkts = ip_packets()
    frames = [frame(p) for p in pkts]
    path = tmp_path / f"{name}.pcap"
    scapy_write(path, frames, linktype, nano)
    with PcapReader(str(path)) as r:
        got = list(r)
        assert r.linktypes == [linktype]
        assert r.stopped_at is None
        assert (r.records, r.packets, r.non_ip, r.truncated) == (6, 6, 0, 0)
    assert [b for _, b in got] == [bytes(p) for p in pkts]
    for i, (ts, _) in enumerate(got):
        assert ts == pytest.approx(1700000000 + i * 0.25 + 0.000123, abs=1e-6)


def test_big_endian_pcap_and_null_family_in_other_byte_order(tmp_path: Path) -> None:
    pkt = bytes(ip_packets()[0])
    path = tmp_path / "be.pcap"
    with open(path, "wb") as f:
        f.write(struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0))
        for i, fam in enumerate((struct.pack(">I", 2), struct.pack("<I", 2))):
            data = fam + pkt
            f.write(struct.pack(">IIII", 1000 + i, 500000, len(data), len(data)) + data)
    got = read_packets(str(path))
    assert got == [(1000.5, pkt), (1001.5, pkt)]


def test_ethernet_padding_is_cut_and_non_ip_counted(tmp_path: Path) -> None:
    small = IP(src="10.231.3.10", dst="10.231.3.11") / TCP(flags="A")  # 40 bytes: padded to 60
    frames = [
        Ether() / small / Padding(b"\0" * 6),
        Ether() / ARP(),
        Ether(type=0x0800) / Raw(b"\x60" + b"\0" * 40),
    ]
    path = tmp_path / "pad.pcap"
    scapy_write(path, frames, 1)
    with PcapReader(str(path)) as r:
        got = list(r)
        assert r.non_ip == 2  # ARP, and an IPv6 nibble under the IPv4 ethertype
    assert [b for _, b in got] == [bytes(small)]


def test_snaplen_cut_packets_are_counted_and_skipped(tmp_path: Path) -> None:
    pkts = [bytes(p) for p in ip_packets()[:3]]
    path = tmp_path / "snap.pcap"
    with PcapWriter(str(path), linktype=101, snaplen=30) as w:
        for i, p in enumerate(pkts):
            w.write(float(i), p if i != 1 else p[:20])  # the 2nd fits in the snap length
    with PcapReader(str(path)) as r:
        assert [b for _, b in r] == [pkts[1][:20]]
        assert (r.records, r.truncated, r.packets) == (3, 2, 1)
    with PcapReader(str(path), keep_truncated=True) as r:
        assert [len(b) for _, b in r] == [30, 20, 30]


@pytest.mark.parametrize("cut", [3, 10, 24 + 16 + 7])
def test_truncated_file_yields_what_is_valid_and_says_where(tmp_path: Path, cut: int) -> None:
    pkts = [bytes(p) for p in ip_packets()[:4]]
    path = tmp_path / "t.pcap"
    with PcapWriter(str(path), linktype=101) as w:
        for i, p in enumerate(pkts):
            w.write(float(i), p)
    data = path.read_bytes()
    whole = len(data)
    path.write_bytes(data[: whole - cut])
    with PcapReader(str(path), chunk=64) as r:
        got = [b for _, b in r]
        offset, reason = r.stopped_at
    last_rec = whole - 16 - len(pkts[3])
    if cut <= len(pkts[3]):
        assert got == pkts[:3] and offset == last_rec and "truncated packet data" in reason
    else:
        prev = last_rec - 16 - len(pkts[2])
        assert got == pkts[:2] and offset == prev


def test_corrupt_record_length_stops_there(tmp_path: Path) -> None:
    pkt = bytes(ip_packets()[0])
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path), linktype=101) as w:
        w.write(1.0, pkt)
    with open(path, "ab") as f:
        f.write(struct.pack("<IIII", 2, 0, 0x7FFFFFF0, 0x7FFFFFF0) + b"junk" * 10)
    with PcapReader(str(path)) as r:
        assert [b for _, b in r] == [pkt]
        assert r.stopped_at == (24 + 16 + len(pkt), "corrupt record: caplen 2147483632 > 262144")


def test_unknown_link_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "user0.pcap"
    with PcapWriter(str(path), linktype=147) as w:
        w.write(1.0, b"\x45" + b"\0" * 19)
    with pytest.raises(ConfigError, match=r"unsupported link type 147 \(USER0\) in .*user0.pcap"):
        PcapReader(str(path))


def test_not_a_capture_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"hello world, not a pcap")
    with pytest.raises(ConfigError, match="not a pcap or pcapng file"):
        PcapReader(str(path))
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        PcapReader(str(path))


def test_writer_roundtrip_nanoseconds(tmp_path: Path) -> None:
    pkts = [bytes(p) for p in ip_packets()]
    path = tmp_path / "ns.pcap"
    with PcapWriter(str(path), linktype=101, nanosecond=True) as w:
        for i, p in enumerate(pkts):
            w.write(1000 + i * 1e-9 * 7, p)
    got = read_packets(str(path))
    assert [b for _, b in got] == pkts
    assert got[1][0] - got[0][0] == pytest.approx(7e-9, abs=1e-9)


# --- pcapng ------------------------------------------------------------------


def test_scapy_pcapng_ethernet(tmp_path: Path) -> None:
    pkts = ip_packets()
    path = tmp_path / "s.pcapng"
    w = PcapNgWriter(str(path))
    for i, p in enumerate(pkts):
        f = Ether() / Dot1Q(vlan=3) / p
        f.time = 1700000000 + i
        w.write(f)
    w.close()
    got = read_packets(str(path))
    assert [b for _, b in got] == [bytes(p) for p in pkts]
    assert [ts for ts, _ in got] == [1700000000.0 + i for i in range(len(pkts))]


class NgBuilder:
    """Hand-built pcapng: several interfaces, if_tsresol, both byte orders, SPB."""

    def __init__(self, endian: str = "<") -> None:
        self.e = endian
        self.out = b""

    def block(self, btype: int, body: bytes) -> None:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        self.out += struct.pack(self.e + "II", btype, n) + body + struct.pack(self.e + "I", n)

    def shb(self) -> None:
        self.block(0x0A0D0D0A, struct.pack(self.e + "IHHq", 0x1A2B3C4D, 1, 0, -1))

    def idb(self, linktype: int, tsresol: int | None = None, snaplen: int = 0) -> None:
        opts = b""
        if tsresol is not None:
            opts = struct.pack(self.e + "HHB3x", 9, 1, tsresol) + struct.pack(self.e + "HH", 0, 0)
        self.block(1, struct.pack(self.e + "HHI", linktype, 0, snaplen) + opts)

    def epb(self, ifid: int, ticks: int, data: bytes, wirelen: int | None = None) -> None:
        hdr = struct.pack(
            self.e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data), wirelen or len(data)
        )
        self.block(6, hdr + data)

    def spb(self, data: bytes) -> None:
        self.block(3, struct.pack(self.e + "I", len(data)) + data)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_with_own_link_types_and_resolutions(tmp_path: Path, endian: str) -> None:
    p4, p6 = bytes(ip_packets()[0]), bytes(ip_packets()[-1])
    b = NgBuilder(endian)
    b.shb()
    b.idb(1)  # Ethernet, default µs
    b.idb(113, tsresol=9)  # SLL, ns
    b.idb(101, tsresol=0x80 | 10)  # raw, 2^-10 s
    b.block(4, b"\0" * 8)  # name resolution block: skipped
    b.epb(0, 1_700_000_000_500_000, bytes(Ether() / IP(p4)))
    b.epb(1, 1_700_000_001_000_000_007, bytes(CookedLinux() / IP(p4)))
    b.epb(2, (1_700_000_002 << 10) + 512, p6)
    b.block(5, b"\0" * 12)  # interface statistics block: skipped
    b.epb(1, 1_700_000_003_000_000_000, bytes(CookedLinux() / IP(p4))[:30], wirelen=80)
    path = tmp_path / "multi.pcapng"
    path.write_bytes(b.out)
    with PcapReader(str(path)) as r:
        got = list(r)
        assert r.linktypes == [1, 113, 101]
        assert (r.records, r.packets, r.truncated) == (4, 3, 1)
        assert r.stopped_at is None
    assert [x for _, x in got] == [p4, p4, p6]
    assert got[0][0] == 1_700_000_000.5
    assert got[1][0] == pytest.approx(1_700_000_001.000000007, abs=1e-6)
    assert got[2][0] == 1_700_000_002.5


def test_pcapng_second_section_other_byte_order_and_spb(tmp_path: Path) -> None:
    p4 = bytes(ip_packets()[1])
    a = NgBuilder("<")
    a.shb()
    a.idb(101)
    a.epb(0, 5_000_000, p4)
    b = NgBuilder(">")
    b.shb()
    b.idb(0)
    b.spb(struct.pack("<I", 2) + p4)
    path = tmp_path / "sections.pcapng"
    path.write_bytes(a.out + b.out)
    got = read_packets(str(path))
    assert [x for _, x in got] == [p4, p4]
    assert got[0][0] == 5.0 and got[1][0] == 5.0  # SPB has no timestamp: keeps the last one


def test_pcapng_unknown_link_type_on_an_interface(tmp_path: Path) -> None:
    b = NgBuilder()
    b.shb()
    b.idb(101)
    b.idb(147)
    b.epb(0, 1, bytes(ip_packets()[0]))
    b.epb(1, 2, b"\x01\x02")
    path = tmp_path / "user0.pcapng"
    path.write_bytes(b.out)
    r = PcapReader(str(path))
    it = iter(r)
    assert next(it)[1] == bytes(ip_packets()[0])
    with pytest.raises(ConfigError, match=r"unsupported link type 147 \(USER0\)"):
        next(it)


def test_pcapng_truncated_block(tmp_path: Path) -> None:
    b = NgBuilder()
    b.shb()
    b.idb(101)
    pkts = [bytes(p) for p in ip_packets()[:3]]
    for i, p in enumerate(pkts):
        b.epb(0, i, p)
    path = tmp_path / "cut.pcapng"
    path.write_bytes(b.out[:-10])
    with PcapReader(str(path)) as r:
        assert [x for _, x in r] == pkts[:2]
        offset, reason = r.stopped_at
    assert offset == len(b.out) - (32 + len(pkts[2]) + (-len(pkts[2]) % 4))
    assert reason.startswith("truncated block (type 0x6")


# --- golden captures ---------------------------------------------------------


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="golden captures not present")
@pytest.mark.parametrize(
    "name,count",
    [
        ("offline-input.pcap", 4722),
        ("target-side.pcap", 124),
        ("online-side.pcap", 127),
        ("control-channel.pcap", 108),
    ],
)
def test_golden_counts(name: str, count: int) -> None:
    with PcapReader(str(FIXTURES / name)) as r:
        pkts = list(r)
        assert (r.packets, r.truncated, r.non_ip, r.stopped_at) == (count, 0, 0, None)
    assert all(p[0] >> 4 == 4 and struct.unpack_from("!H", p, 2)[0] == len(p) for _, p in pkts)
    assert all(a[0] <= b[0] for a, b in zip(pkts, pkts[1:]))


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="golden captures not present")
def test_golden_offline_input_facts() -> None:
    syns = gets = rsts = 0
    ports = set()
    for _, p in read_packets(str(FIXTURES / "offline-input.pcap")):
        ihl = (p[0] & 15) * 4
        sport, dport = struct.unpack_from("!HH", p, ihl)
        flags = p[ihl + 13]
        doff = (p[ihl + 12] >> 4) * 4
        if dport == 80 and flags & 0x12 == 0x02:
            syns += 1
            ports.add(sport)
        if dport == 80 and p[ihl + doff : ihl + doff + 4] == b"GET ":
            gets += 1
        rsts += bool(flags & 0x04)
    assert (syns, len(ports), gets, rsts) == (396, 396, 391, 0)


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="golden captures not present")
def test_golden_first_synack_of_target_side() -> None:
    want = bytes.fromhex(
        "4500003c00004000400624d70ae8000c0ae8000a0050eef0589267e15760331ca012fe8816140000"
        "020405b40402080ab12ada4fb3aab5240103030a"
    )
    pkts = [p for _, p in read_packets(str(FIXTURES / "target-side.pcap"))]
    assert want in pkts


def test_file_is_closed_when_iteration_ends(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path), linktype=101) as w:
        w.write(1.0, bytes(ip_packets()[0]))
    r = PcapReader(str(path))
    assert len(list(r)) == 1
    assert r._f.closed and r.packets == 1
