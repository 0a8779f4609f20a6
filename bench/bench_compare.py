"""CPU per request of tcpcopy's --compare work, without the network (prints figures).

Feeds core/compare.Comparer what tcpcopy feeds it for a keep-alive HTTP
connection (the captured request and answer, the copy it sent, the target's
record and payload item) and prints microseconds per request for each part.

    python3 bench/bench_compare.py [--requests 20000] [--body 2000]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycopy_engine.core.compare import Comparer  # noqa: E402
from pycopy_engine.core.stats import Stats  # noqa: E402
from pycopy_engine.wire.control import make_record  # noqa: E402
from pycopy_engine.wire.tcpip import ACK, SYN, build_ipv4_tcp  # noqa: E402

CLI, ONL, TGT = bytes([10, 1, 0, 10]), bytes([10, 1, 0, 11]), bytes([10, 1, 0, 12])
PSH = 0x08


def pkt(src, dst, sport, dport, seq, ack, flags, data=b""):
    return build_ipv4_tcp(src, dst, sport, dport, seq, ack, flags, 65535, payload=data)


def build(n: int, body: int, payload: bytes = b""):
    flow = (CLI, 40000, ONL, 80, 0)
    key = (CLI, 40000, TGT, 80)
    cmp = Comparer(Stats(), lambda k: (flow, 0) if k == key else None, lambda f: f == flow)
    c, s, t = 1000, 5000, 9000
    ev = [("on", pkt(CLI, ONL, 40000, 80, c, 0, SYN)), ("on", pkt(ONL, CLI, 80, 40000, s, c + 1, SYN | ACK)),
          ("sent", pkt(CLI, TGT, 40000, 80, c, 0, SYN)),
          ("rec", make_record(pkt(TGT, CLI, 80, 40000, t, c + 1, SYN | ACK)))]
    c, s, t = c + 1, s + 1, t + 1
    if not payload:
        payload = b'{"id": 1, "name": "x", "items": [1, 2, 3]}' + b" " * max(0, body - 42)
    for i in range(n):
        req = b"GET /users/%d HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n" % i
        ans = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(payload)) + payload
        ev.append(("on", pkt(CLI, ONL, 40000, 80, c, s, ACK | PSH, req)))
        ev.append(("on", pkt(ONL, CLI, 80, 40000, s, c + len(req), ACK | PSH, ans)))
        ev.append(("sent", pkt(CLI, TGT, 40000, 80, c, t, ACK | PSH, req)))
        tp = pkt(TGT, CLI, 80, 40000, t, c + len(req), ACK | PSH, ans)
        ev.append(("rec", make_record(tp)))
        ev.append(("item", [(CLI, 40000, TGT, 80, t, c + len(req), ACK | PSH, ans)]))
        c, s, t = c + len(req), s + len(ans), t + len(ans)
    return cmp, ev


def run(cmp, ev) -> float:
    now = 1.0
    t0 = time.process_time()
    for i, (kind, x) in enumerate(ev):
        now += 0.00005
        if kind == "on":
            cmp.on_online(x, now)
        elif kind == "sent":
            cmp.on_sent(x, now)
        elif kind == "rec":
            cmp.on_record(x, now)
        else:
            cmp.on_items(x, now)
        if i % 1000 == 0:
            cmp.on_timer(now)
            cmp.take_records()
    cmp.finish(now + 10)
    return time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--body", type=int, default=2000)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    cmp, ev = build(a.requests, a.body)
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(run, cmp, ev)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return 0
    cpu = run(cmp, ev)
    print("compare core: %.1f us/request (%d requests, %d-byte bodies, records %d)"
          % (1e6 * cpu / a.requests, a.requests, a.body, cmp.c["compare_records"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
