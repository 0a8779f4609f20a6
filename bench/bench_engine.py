"""Micro-benchmark of tcpcopy's session engine alone (no sockets): CPU per
request for keep-alive and short-connection sessions, captured packets and
response records prepared in advance.  Prints figures; not a test.

    python3 bench/bench_engine.py [--requests 20000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycopy_engine.core.engine import Engine, EngineConfig  # noqa: E402
from pycopy_engine.core.mapping import TargetMap  # noqa: E402
from pycopy_engine.wire.control import make_record  # noqa: E402
from tests.unit.simtcp import SimClient, SimServer  # noqa: E402

CLIENT = bytes([10, 9, 0, 10])
ONLINE = bytes([10, 9, 0, 11])
TARGET = bytes([10, 9, 0, 12])


def record_trace(sessions: int, per_session: int):
    """Run client/online conversations and a first engine pass against a simulated
    target; return the engine's inputs in order: ("c", pkt) captures, ("r", rec) records."""
    eng = Engine(EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 80)], seed=1))
    target = SimServer(TARGET, 80, seed=3)
    trace = []
    now = 0.0
    for i in range(sessions):
        online = SimServer(ONLINE, 80, seed=i)
        cl = SimClient(online, CLIENT, 1024 + i % 60000, isn=i * 7919)
        cl.connect()
        for j in range(per_session):
            cl.request(b"GET 200 /%d/%d" % (i, j))
        cl.close()
        for pkt in cl.captured:
            now += 0.0001
            trace.append(("c", pkt, now))
            eng.on_capture(pkt, now)
            while True:
                _ctl, tx = eng.take_output()
                if not tx:
                    break
                for p, _d in tx:
                    target.receive(p)
                for out in target.take():
                    rec = make_record(out)
                    trace.append(("r", rec, now))
                    eng.on_record(rec, now)
        now += 0.01
        eng.on_timer(now)
    return trace, eng.stats.c["requests_sent"]


CLOCK = time.perf_counter


def replay(trace, unattended=False):
    eng = Engine(EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 80)], seed=1))
    if unattended:  # the brake and the health figures, as tcpcopy runs by default
        from pycopy_engine.core.brake import BrakeConfig, EngineBrake
        from pycopy_engine.core.health import Health

        eng.health = Health(eng)
        eng.brake = EngineBrake(eng, BrakeConfig())
    on_capture, on_record, take = eng.on_capture, eng.on_record, eng.take_output
    t0 = CLOCK()
    for kind, data, now in trace:
        if kind == "c":
            on_capture(data, now)
        else:
            on_record(data, now)
        take()
    return CLOCK() - t0, eng


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--cpu", action="store_true",
                    help="measure the process's CPU time, not wall time (on a busy machine)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many passes")
    ap.add_argument("--unattended", action="store_true",
                    help="with the brake and health hooks set (tcpcopy's default)")
    args = ap.parse_args()
    from pycopy_engine import accel  # make accel (docs/accel.md); PYCOPY_PURE=1: pure

    print(accel.describe(load=True), flush=True)
    global CLOCK
    if args.cpu:
        CLOCK = time.process_time
    from pycopy_engine.cli.common import tune_gc

    tune_gc()  # as the commands do
    for name, per in (("keep-alive (100 req/conn)", 100), ("short (1 req/conn)", 1)):
        trace, reqs = record_trace(max(1, args.requests // per), per)
        best = min(replay(trace, args.unattended)[0] for _ in range(args.repeat))
        _t, eng = replay(trace, args.unattended)
        assert eng.stats.c["requests_sent"] == reqs, (eng.stats.c["requests_sent"], reqs)
        n_c = sum(1 for k, _d, _n in trace if k == "c")
        print(f"{name:<28} {reqs} requests, {n_c} captured packets, {len(trace) - n_c} records: "
              f"{1e6 * best / reqs:.1f} us/request, {1e6 * best / len(trace):.2f} us/input")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            replay(trace)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
