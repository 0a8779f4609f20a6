"""Per-packet cost of capture (ring vs recv loop vs raw IP socket) and raw send.

    sudo python bench/bench_capture.py [--packets 20000] [--size 100] [--prefix pyb]

Builds a light netns lab (tests/lab), sends N TCP packets from the client to
the online host with a RawSender (timed: raw send cost), lets the kernel queue
them in six captures opened on online at the same time (rings V2 and V3,
recvmmsg and plain recv loops on AF_PACKET and raw IP sockets), then times
draining each capture with ``read_batch`` (the packets are already queued, so
the figure is the user-space cost per packet: syscalls, ring walking, the
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


def open_captures(prog: bytes) -> dict[str, Capture]:
    return {
        "ring TPACKET_V2": open_packet_capture(
            ["eth0"], prog, snaplen=2048, version=2, max_batch=4096, ring_bytes=96 << 20
        ),
        "ring TPACKET_V3": open_packet_capture(
            ["eth0"], prog, snaplen=65535, version=3, max_batch=4096, ring_bytes=96 << 20
        ),
        "recvmmsg AF_PACKET": open_packet_capture(
            ["eth0"], prog, ring=False, snaplen=2048, rcvbuf=256 << 20
        ),
        "recv loop AF_PACKET": open_packet_capture(
            ["eth0"], prog, ring=False, snaplen=2048, rcvbuf=256 << 20, batched=False
        ),
        "recvmmsg raw IP": open_raw_ip_capture(prog, rcvbuf=256 << 20, snaplen=2048),
        "recv loop raw IP": open_raw_ip_capture(
            prog, rcvbuf=256 << 20, snaplen=2048, batched=False
        ),
    }


def send_all(sender: RawSender, pkts: list[bytes], dst: bytes) -> tuple[int, float]:
    """Send, pausing 1 ms every 2000 packets so the receiving backlog (the
    veth peer is processed on this CPU) never overflows; the pauses are not
    counted."""
    ok = 0
    busy = 0.0
    for i in range(0, len(pkts), 2000):
        t0 = time.perf_counter()
        for p in pkts[i : i + 2000]:
            ok += sender.send(p, dst)
        busy += time.perf_counter() - t0
        time.sleep(0.001)
    return ok, busy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--size", type=int, default=100, help="TCP payload bytes per packet")
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds is printed")
    ap.add_argument("--prefix", default="pyb")
    ap.add_argument("--subnet", default="10.231.9")
    args = ap.parse_args()
    n = args.packets
    unpack = _HDR.unpack_from

    def noop(p: memoryview) -> None:
        pass

    def parse(p: memoryview) -> None:
        unpack(p)

    best: dict[tuple[str, str], float] = {}
    info: dict[tuple[str, str], str] = {}
    with Lab(args.prefix, args.subnet) as lab:
        pkts = build_packets(lab.ip["client"], lab.ip["online"], n, args.size)
        big = build_packets(lab.ip["client"], lab.ip["online"], n, 1460)
        dst = socket.inet_aton(lab.ip["online"])
        prog = bpf.compile_filter(f"tcp and dst port {DPORT}")
        stats = Stats()
        with lab.inside("client"):
            sender = RawSender(stats, sndbuf=256 << 20)
        print(
            f"lab {args.prefix}: {n} packets of {40 + args.size} bytes, client -> online, "
            f"best of {args.rounds} rounds"
        )
        for _ in range(args.rounds):
            # raw send with nothing capturing (the receiver's kernel work still
            # runs on this CPU: veth delivers synchronously)
            for label, batch in (("raw send small", pkts), ("raw send 1500 B", big)):
                ok, secs = send_all(sender, batch, dst)
                key = (label, "")
                best[key] = min(best.get(key, 1e9), secs / n * 1e6)
                info[key] = f"{ok}/{n} sent, errors {dict(stats.c) or 0}"
            time.sleep(0.3)
            for hname, handler in (("noop", noop), ("parse", parse)):
                with lab.inside("online"):
                    caps = open_captures(prog)
                ok, _ = send_all(sender, pkts, dst)
                time.sleep(0.5)  # everything is queued in the kernel now
                for name, cap in caps.items():
                    got, secs = drain_timed(cap, handler)
                    st = cap.kernel_stats()
                    key = (name, hname)
                    if got:
                        best[key] = min(best.get(key, 1e9), secs / got * 1e6)
                    info[key] = f"{got}/{ok} read, kernel drops {st['drops']}"
                    cap.close()
        sender.close()
    for (name, hname), us in best.items():
        label = f"{name} handler={hname}" if hname else name
        print(f"{label:<38} {us:7.3f} us/packet  ({info[(name, hname)]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
