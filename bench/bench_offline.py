"""Engine throughput: offline replay of a large capture at top speed into a
discard sink (issue 13).  Prints requests/s per core; not a test.

    python3 bench/bench_offline.py [--requests 100000] [--keep FILE.pcap] [--workers 2]

A capture of simulated client sessions (keep-alive: 100 requests per
connection; short: one) is written to a pcap file first, together with the
answer records a target gave in a first pass.  The timed part is what
``tcpcopy --pcap FILE -a <huge>`` does per packet: read the file
(io.pcapfile), pace it (core.offline.Replay, every packet due at once) and
run the session engine; each packet the engine sends is discarded and the
target's answer records are fed back as soon as the packet that caused them
was handled (an instant target that costs nothing), so the figure is the
engine's own ceiling, no target or intercept on the same cores.  CPU time is
the process's (``time.process_time``): requests per CPU-second = requests/s
per core.  The replay is checked: it must send every request of the file.

``--workers N`` adds the figure of ``tcpcopy --workers N`` offline: N forked
processes each read the whole file and replay the flows of their hash slot
(core/flowhash.py), started together; requests/s is every request of the
file over the wall time until the last worker is done, printed for 1 worker
(the same code, one slot) and N, with their ratio and the load average
(the machine's other work shares the cores: a figure, never a pass/fail).
Then the machine's own ceiling: N copies of the 1-worker replay at once,
which share nothing; where vCPUs are hyperthreads or the host is busy, each
copy's CPU-second does less and N copies do less than N times the work, and
the --workers ratio is printed as a share of that ceiling.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import ONLINE, TARGET, record_trace  # noqa: E402
from pycopy_engine.core.engine import Engine, EngineConfig  # noqa: E402
from pycopy_engine.core.flowhash import flow_slot, own_flows  # noqa: E402
from pycopy_engine.core.mapping import TargetMap  # noqa: E402
from pycopy_engine.core.offline import Replay  # noqa: E402
from pycopy_engine.io.pcapfile import PcapReader, PcapWriter  # noqa: E402

BATCH = 4096  # packets per Replay.due() call, as tcpcopy's timer handler takes them


def write_capture(trace, path: str) -> list[list[bytes]]:
    """The captured packets into ``path``; returns, per packet, the answer
    records that followed it in the first pass."""
    answers: list[list[bytes]] = []
    with PcapWriter(path) as w:
        for kind, data, ts in trace:
            if kind == "c":
                w.write(1.7e9 + ts, data)
                answers.append([])
            elif answers:
                answers[-1].append(data)
    return answers


def slot_answers(path: str, answers: list[list[bytes]], index: int,
                 count: int) -> list[list[bytes]]:
    """The answers of the packets of slot ``index``, in file order (read
    before the timed part)."""
    with PcapReader(path) as r:
        return [a for (_ts, pkt), a in zip(r, answers) if flow_slot(pkt, count) == index]


def replay_file(path: str, answers: list[list[bytes]],
                worker: tuple[int, int] = (0, 1)) -> tuple[float, float, Engine]:
    """Top-speed replay of ``path`` (``worker`` = (index, count): only the
    flows of that slot, whose answers ``answers`` are, see slot_answers);
    returns (CPU seconds, wall seconds, engine)."""
    index, count = worker
    # the engine keeps the original client ports (no worker port class): the
    # recorded answers name them, and there is no shared target to collide on
    eng = Engine(EngineConfig(maps=[TargetMap(ONLINE, 80, TARGET, 80)], seed=1))
    on_capture, on_record, take = eng.on_capture, eng.on_record, eng.take_output
    if count > 1:  # as tcpcopy --workers does offline (without -I)
        rp = Replay(lambda: own_flows(PcapReader(path), index, count), rounds=1, speed=1e9)
    else:
        rp = Replay(lambda: PcapReader(path), rounds=1, speed=1e9)
    clock = time.monotonic
    c0, w0 = time.process_time(), clock()
    rp.start(w0)
    i = 0
    while not rp.done:
        now = clock()
        due = rp.due(now + 1e6, BATCH)  # everything is due: top speed
        for _rnd, _ts, pkt in due:
            if pkt is None:  # another slot's first or last packet (own_flows)
                continue
            on_capture(pkt, now)
            take()  # the discard sink
            for rec in answers[i]:
                on_record(rec, now)
            take()
            i += 1
    return time.process_time() - c0, clock() - w0, eng


def replay_workers(path: str, answers: list[list[bytes]], count: int,
                   copies: bool = False) -> tuple[float, list[int], list[float]]:
    """``count`` forked workers replay their slots of ``path`` at once (with
    ``copies``: each the whole file, as one worker alone would: the machine's
    own ceiling for ``count`` such processes); returns (wall seconds until the
    last is done, requests each sent, CPU seconds each used)."""
    pids, results, gos = [], [], []
    import gc

    gc.collect()
    gc.freeze()  # as tcpcopy's workers do (tune_gc): no collection walks the file's objects
    for index in range(count):
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(go_w)
                os.close(res_r)
                slot = (0, 1) if copies else (index, count)
                mine = answers if slot[1] == 1 else slot_answers(path, answers, index, count)
                os.read(go_r, 1)
                cpu, _wall, eng = replay_file(path, mine, slot)
                os.write(res_w, b"%d %f" % (eng.stats.c["requests_sent"], cpu))
                code = 0
            finally:
                os._exit(code)
        os.close(go_r)
        os.close(res_w)
        pids.append(pid)
        gos.append(go_w)
        results.append(res_r)
    time.sleep(0.2 if count == 1 else 3.0)  # every worker forked, its answers sorted out
    t0 = time.monotonic()
    for fd in gos:
        os.write(fd, b"g")
        os.close(fd)
    sent, cpus = [], []
    for fd in results:
        data = b""
        while True:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            data += chunk
        os.close(fd)
        got = data.split() or [b"0", b"0"]
        sent.append(int(got[0]))
        cpus.append(float(got[1]))
    wall = time.monotonic() - t0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status:
            sys.exit(f"bench: a worker failed ({status})")
    return wall, sent, cpus


def bench_workers(path: str, answers: list[list[bytes]], reqs: int, count: int,
                  repeat: int, single_wall: float) -> None:
    """``single_wall``: the wall time of the plain in-process replay (no fork)."""
    walls = {}
    for n in (1, count):
        best = float("inf")
        shares: list[int] = []
        cpus: list[float] = []
        for _ in range(repeat):
            wall, got, cpu = replay_workers(path, answers, n)
            if sum(got) != reqs:
                sys.exit(f"bench: {n} worker(s) sent {sum(got)} of {reqs} requests")
            if wall < best:
                best, shares, cpus = wall, got, cpu
        walls[n] = best
        per_cpu = " / ".join(f"{r / c:,.0f}" for r, c in zip(shares, cpus))
        print(f"  --workers {n}: {reqs / best:,.0f} requests/s (wall {best:.2f} s; requests per"
              f" worker {' / '.join(map(str, shares))}; per CPU-second {per_cpu})")
    load = os.getloadavg()
    print(f"  ratio {count} workers / 1 worker: {walls[1] / walls[count]:.2f}x; / the"
          f" unforked replay: {single_wall / walls[count]:.2f}x ({os.cpu_count()} CPUs,"
          f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    # what this machine gives any `count` CPU-bound processes: `count` copies of
    # the 1-worker replay at once (no sharing at all); on shared or hyperthreaded
    # vCPUs each copy's CPU-second does less, and no --workers ratio can beat this
    best, cpus = float("inf"), []
    for _ in range(repeat):
        wall, got, cpu = replay_workers(path, answers, count, copies=True)
        if got != [reqs] * count:
            sys.exit(f"bench: a copy sent {got} of {reqs} requests")
        if wall < best:
            best, cpus = wall, cpu
    per_cpu = " / ".join(f"{reqs / c:,.0f}" for c in cpus)
    print(f"  the machine's ceiling: {count} copies of the 1-worker replay at once do"
          f" {count * walls[1] / best:.2f}x one's work in its time (per CPU-second {per_cpu});"
          f" --workers {count} reaches {walls[1] / walls[count] / (count * walls[1] / best):.0%}"
          f" of that")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many replays")
    ap.add_argument("--keep", help="write the keep-alive capture here (kept)")
    ap.add_argument("--only", choices=("keep-alive", "short"), help="time this kind only")
    ap.add_argument("--workers", type=int, default=1,
                    help="also time N forked workers sharing the file by flow hash")
    args = ap.parse_args()
    from pycopy_engine import accel  # make accel (docs/accel.md); PYCOPY_PURE=1: pure

    print(accel.describe(load=True), flush=True)
    from pycopy_engine.cli.common import tune_gc

    tune_gc()  # as the commands do
    tmp = tempfile.mkdtemp(prefix="pycopy-bench-offline-")
    try:
        kinds = (("keep-alive (100 req/conn)", 100), ("short (1 req/conn)", 1))
        for name, per in kinds:
            if args.only and not name.startswith(args.only):
                continue
            trace, reqs = record_trace(max(1, args.requests // per), per)
            path = args.keep if (args.keep and per == 100) else os.path.join(tmp, f"{per}.pcap")
            answers = write_capture(trace, path)
            best_cpu = best_wall = float("inf")
            for _ in range(args.repeat):
                cpu, wall, eng = replay_file(path, answers)
                sent = eng.stats.c["requests_sent"]
                if sent != reqs:
                    sys.exit(f"bench: the replay sent {sent} of {reqs} requests")
                best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
            mb = os.path.getsize(path) / 1e6
            print(f"{name:<26} {reqs} requests, {len(answers)} packets ({mb:.1f} MB pcap): "
                  f"{reqs / best_cpu:,.0f} requests/s per core "
                  f"({len(answers) / best_cpu:,.0f} packets/s; wall {reqs / best_wall:,.0f}/s)")
            if args.workers > 1:
                bench_workers(path, answers, reqs, args.workers, args.repeat, best_wall)
    finally:
        for f in Path(tmp).iterdir():
            f.unlink()
        os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
