"""What -m costs: resident bytes per half-open session (engine alone, SYNs with
SYN-ACK records from a simulated target), the cost of reading the RSS, of one
eviction round, and of a session opened at the cap.  Prints figures; not a test.

    python3 bench/bench_memory.py [--sessions 40000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycopy_engine.core.engine import Engine, EngineConfig  # noqa: E402
from pycopy_engine.core.mapping import TargetMap  # noqa: E402
from pycopy_engine.io.procmem import rss_bytes  # noqa: E402
from pycopy_engine.wire.control import make_record  # noqa: E402
from pycopy_engine.wire.tcpip import ACK, SYN, build_ipv4_tcp, parse_ipv4_tcp, syn_options  # noqa: E402

CLIENT = bytes([10, 9, 0, 10])
ONLINE = bytes([10, 9, 0, 11])
TARGET = bytes([10, 9, 0, 12])


def flood(eng: Engine, n: int, first_port: int, t: float) -> float:
    opts = syn_options(1460, 7, True, (1, 0))
    for i in range(n):
        port = first_port + i
        eng.on_capture(build_ipv4_tcp(CLIENT, ONLINE, port % 64000 + 1024, 80, i * 7919, 0, SYN,
                                      65535, opts, b"", i & 0xFFFF), t)
        _ctl, tx = eng.take_output()
        for pkt, _dst in tx:  # the target answers each SYN with a SYN-ACK
            seg = parse_ipv4_tcp(pkt)
            if seg.flags == SYN:
                synack = build_ipv4_tcp(TARGET, CLIENT, 80, seg.sport, 5000, seg.seq + 1,
                                        SYN | ACK, 65535, syn_options(1460, 7, True, (9, 1)))
                eng.on_record(make_record(synack), t)
        eng.take_output()
        t += 0.0001
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=40000)
    n = ap.parse_args().sessions
    eng = Engine(EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 80)], seed=1,
                              mem_limit=1 << 40))
    r0 = rss_bytes()
    t0 = time.perf_counter()
    t = flood(eng, n, 0, 0.0)
    dt = time.perf_counter() - t0
    r1 = rss_bytes()
    print(f"{n} half-open sessions: {(r1 - r0) / n:.0f} resident bytes each "
          f"(baseline {r0 / 1048576:.1f} MB), {dt / n * 1e6:.1f} µs per SYN + SYN-ACK")
    k = 2000
    t0 = time.perf_counter()
    for _ in range(k):
        rss_bytes()
    print(f"reading /proc/self/statm: {(time.perf_counter() - t0) / k * 1e6:.1f} µs")
    t0 = time.perf_counter()
    gone = eng.observe_rss(eng.memory.high + 1, t)  # as if the RSS reached the high mark
    dt = time.perf_counter() - t0
    print(f"one eviction round: {gone} of {n} sessions in {dt * 1000:.1f} ms "
          f"({dt / max(gone, 1) * 1e6:.1f} µs each), cap now {eng.memory.cap}")
    t0 = time.perf_counter()
    m = 10000
    flood(eng, m, n, t)
    dt = time.perf_counter() - t0
    print(f"{m} more SYNs at the cap: {dt / m * 1e6:.1f} µs each (eviction included), "
          f"{len(eng.sessions)} live, {eng.stats.c['evicted:memory_limit']} evicted in all")


if __name__ == "__main__":
    main()
