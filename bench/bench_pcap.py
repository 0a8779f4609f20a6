"""Micro-benchmark: capture-file reading speed (packets/s).

    python bench/bench_pcap.py [FILE ...]

Without arguments it reads the golden offline-input.pcap (4,722 packets) and
synthetic files in other link types / pcapng, each several times, and prints
the best packets/s of the repeats.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pycopy_engine.io.pcapfile import PcapReader, PcapWriter, read_packets  # noqa: E402

GOLDEN = os.path.join(
    os.environ.get(
        "PYCOPY_FIXTURES",
        os.path.join(
            os.path.dirname(os.path.abspath(__file__)),
            "..",
            "..",
            "shared",
            "fixtures",
            "tcpcopy-1.0",
        ),
    ),
    "offline-input.pcap",
)
REPEAT = 7


def bench(path: str) -> tuple[int, float]:
    best = float("inf")
    n = 0
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        with PcapReader(path) as r:
            n = sum(1 for _ in r)
        best = min(best, time.perf_counter() - t0)
    return n, best


def synthetic(tmp: str, golden: str) -> list[str]:
    pkts = read_packets(golden) * 10
    out = []
    sll = tmp + "/sll.pcap"
    with PcapWriter(sll, linktype=113) as w:
        for ts, p in pkts:
            w.write(ts, b"\0\0\0\1\0\6" + b"\0" * 8 + b"\x08\x00" + p)
    out.append(sll)
    raw = tmp + "/raw-ns.pcap"
    with PcapWriter(raw, linktype=101, nanosecond=True) as w:
        for ts, p in pkts:
            w.write(ts, p)
    out.append(raw)
    ng = tmp + "/eth.pcapng"
    with open(ng, "wb") as f:

        def block(btype: int, body: bytes) -> None:
            body += b"\0" * (-len(body) % 4)
            f.write(struct.pack("<II", btype, len(body) + 12) + body)
            f.write(struct.pack("<I", len(body) + 12))

        block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        block(1, struct.pack("<HHI", 1, 0, 0))
        for ts, p in pkts:
            frame = b"\2" * 12 + b"\x81\x00\x00\x07\x08\x00" + p
            t = int(ts * 1e6)
            block(
                6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(frame), len(frame)) + frame
            )
    out.append(ng)
    return out


def main(argv: list[str]) -> None:
    files = argv or [GOLDEN]
    with tempfile.TemporaryDirectory() as tmp:
        if not argv:
            files += synthetic(tmp, GOLDEN)
        for path in files:
            n, secs = bench(path)
            size = os.path.getsize(path)
            print(
                f"{os.path.basename(path):24s} {n:7d} packets  {secs * 1e3:7.2f} ms  "
                f"{n / secs:10,.0f} packets/s  {size / secs / 1e6:7.1f} MB/s"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
