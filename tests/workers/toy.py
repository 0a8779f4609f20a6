"""A toy program under the worker supervisor, for tests/workers.

    python -m tests.workers.toy N STATS_JSON METRICS_ADDR [--fail-ready I] [--finish]

Each worker counts ``ticks`` (one per 10 ms) and ``ticks_by:worker=i``, has
a gauge ``level`` = 10 + i and ``flag`` = i (merged by max), and
stops on SIGTERM with status 0; ``--finish``: each worker exits 0 by itself
after 30 ticks.  ``--fail-ready I``: worker I exits 3 before it is ready; ``--slow-start``:
the workers sleep 5 s (SIGTERM not handled yet) before they are ready.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from pycopy_engine.io import workers
from pycopy_engine.io.loop import Loop


def child(i: int, args: argparse.Namespace) -> int:
    if args.fail_ready == i:
        return 3
    if args.slow_start:  # the default SIGTERM disposition for a while, as during set-up
        time.sleep(5)
    w = workers.current()
    assert w is not None and w.index == i
    loop = Loop()
    counts = {"ticks": 0, "ticks_by:worker=%d" % i: 0}
    signal.signal(signal.SIGTERM, lambda _s, _f: loop.stop())

    def tick() -> None:
        counts["ticks"] += 1
        counts["ticks_by:worker=%d" % i] += 1
        if args.finish and counts["ticks"] >= 30:
            loop.stop()
            return
        loop.call_later(0.01, tick)

    if not w.ready():
        return 1
    w.attach(loop, lambda: {**counts, "level": 10 + i, "flag": i})
    tick()
    loop.run()
    w.publish(final=True)
    logging.getLogger("pycopy.toy").info("worker %d stopping at %d ticks", i, counts["ticks"])
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int)
    p.add_argument("stats_json")
    p.add_argument("metrics")
    p.add_argument("--fail-ready", type=int, default=-1)
    p.add_argument("--finish", action="store_true")
    p.add_argument("--slow-start", action="store_true")
    args = p.parse_args()
    root = logging.getLogger("pycopy")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.INFO)
    return workers.run_workers(
        args.n, lambda i: child(i, args), name="toy", log=logging.getLogger("pycopy.toy"),
        metrics_addr=args.metrics, stats_json=args.stats_json, stats_interval=0.2,
        gauges=("level", "flag"), merge_rules={"flag": "max"}, ready_timeout=10.0,
        stop_grace=3.0, finish_ok=args.finish)


if __name__ == "__main__":
    sys.exit(main())
