"""Per-packet cost of capture (ring vs recv loop vs raw IP socket) and raw send.

    sudo python bench/bench_capture.py [--packets 20000] [--size 100] [--prefix pyb]

Builds a light netns lab (tests/lab), sends N TCP packets from the client to
the online host with a RawSender (timed: raw send cost), lets the kernel queue
them in three captures opened on online at the same time, then times draining
each capture with ``read_batch`` (the packets are already queued, so the
figure is the user-space cost per packet: syscalls, ring walking, the
handler call).  Two handlers: ``noop`` and ``parse`` (one struct unpack of the
IP+TCP header, as the engine does).  Prints microseconds per packet.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pycopy_engine.core.stats import Stats  # noqa: E402
from pycopy_engine.io import bpf  # noqa: E402
from pycopy_engine.io.capture import (  # noqa: E402
    Capture,
    open_packet_capture,
    open_raw_ip_capture,
)
from pycopy_engine.io.rawsend import RawSender  # noqa: E402
from tests.lab.netns import Lab  # noqa: E402

_HDR = struct.Struct("!BBHHHBBH4s4sHHIIBBH")
DPORT = 9


def build_packets(src: str, dst: str, n: int, size: int) -> list[bytes]:
    out = []
    payload = b"p" * size
    for i in range(n):
        tot = 40 + size
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            tot,
            0,
            0x4000,
            64,
            6,
            0,
            socket.inet_aton(src),
            socket.inet_aton(dst),
        )
        tcp = struct.pack("!HHIIBBHHH", 20000 + i % 40000, DPORT, i, 0, 0x50, 0x18, 65535, 0, 0)
        out.append(ip + tcp + payload)  # checksums: not needed for capture
    return out


def drain_timed(cap: Capture, handle) -> tuple[int, float]:
    """Read until the (already queued) packets are gone."""
    got = 0
    t0 = time.perf_counter()
    while True:
        k = cap.read_batch(handle)
        if not k:
            break
        got += k
    return got, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--size", type=int, default=100, help="TCP payload bytes per packet")
    ap.add_argument("--prefix", default="pyb")
    ap.add_argument("--subnet", default="10.231.9")
    args = ap.parse_args()
    n = args.packets
    with Lab(args.prefix, args.subnet) as lab:
        pkts = build_packets(lab.ip["client"], lab.ip["online"], n, args.size)
        dst = socket.inet_aton(lab.ip["online"])
        prog = bpf.compile_filter(f"tcp and dst port {DPORT}")
        stats = Stats()
        with lab.inside("client"):
            sender = RawSender(stats, sndbuf=256 << 20)
        print(f"lab {args.prefix}: {n} packets of {40 + args.size} bytes, client -> online")
        sink = []

        def noop(p: memoryview) -> None:
            pass

        unpack = _HDR.unpack_from

        def parse(p: memoryview) -> None:
            unpack(p)

        for hname, handler in (("noop", noop), ("parse", parse)):
            with lab.inside("online"):
                caps = {
                    "ring TPACKET_V2": open_packet_capture(
                        ["eth0"], prog, snaplen=2048, version=2, max_batch=4096, ring_bytes=96 << 20
                    ),
                    "ring TPACKET_V3": open_packet_capture(
                        ["eth0"],
                        prog,
                        snaplen=65535,
                        version=3,
                        max_batch=4096,
                        ring_bytes=96 << 20,
                    ),
                    "recv loop AF_PACKET": open_packet_capture(
                        ["eth0"], prog, ring=False, snaplen=2048, rcvbuf=256 << 20
                    ),
                    "recv loop raw IP": open_raw_ip_capture(
                        prog, rcvbuf=256 << 20, snaplen=2048, max_batch=64
                    ),
                }
            t0 = time.perf_counter()
            ok = 0
            for p in pkts:
                ok += sender.send(p, dst)
                if ok % 2000 == 0:
                    time.sleep(0.001)  # let the receiver's backlog drain
            send_s = time.perf_counter() - t0
            if hname == "noop":
                print(
                    f"raw send: {send_s / n * 1e6:7.2f} us/packet "
                    f"({ok} sent, errors {dict(stats.c) or 0}; includes 1 ms pause/2000)"
                )
            time.sleep(0.5)  # everything queued in the kernel
            for name, cap in caps.items():
                got, secs = drain_timed(cap, handler)
                st = cap.kernel_stats()
                per = secs / got * 1e6 if got else float("nan")
                print(
                    f"capture {name:<22} handler={hname:<5}: {per:6.3f} us/packet "
                    f"({got}/{ok} read, kernel drops {st['drops']})"
                )
                cap.close()
        # raw send of MTU-sized packets
        big = build_packets(lab.ip["client"], lab.ip["online"], min(n, 10000), 1460)
        t0 = time.perf_counter()
        ok = sum(sender.send(p, dst) for p in big)
        secs = time.perf_counter() - t0
        print(
            f"raw send 1500-byte packets: {secs / len(big) * 1e6:7.2f} us/packet ({ok} sent, "
            f"errors {dict(stats.c) or 0})"
        )
        sender.close()
        del sink
    return 0


if __name__ == "__main__":
    sys.exit(main())
