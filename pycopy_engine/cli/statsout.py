"""Periodic statistics: the classic log lines, plus --stats-json and --metrics."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Callable, List

from ..core.stats import Stats
from ..io.loop import Loop

GAUGES = ("sessions_active", "buffered_bytes", "control_queue_bytes", "control_links_up",
          "routes", "delayed_records", "tcpcopy_links", "capture_kernel_drops", "rss_bytes",
          "session_cap", "evicted_tuples",
          # issue 12: per target (label target="ip:port")
          "brake_engaged", "health_requests_captured", "health_requests_completed",
          "health_handshakes_failed", "health_replication", "delay_held",
          # issue 9: --compare
          "compare_flows", "compare_capture_drops")

# --workers: how the supervisor merges a gauge of several workers (default:
# the sum; core/statsmerge.py): a brake is engaged when any worker's is, the
# replication health is the worst worker's, the session cap is -1 (none)
# when any worker has none
MERGE_RULES = {"brake_engaged": "max", "health_replication": "min", "session_cap": "cap"}

HELP = {
    "compare_differences": "--compare: target answers that differ from online's answer to the"
    " same request, per endpoint, target and kind (status, size, body, field, latency); raw"
    " differences, no noise cancellation: a baseline target's own counter is the noise level",
    "compare_answers": "--compare: target answers compared with online's, per endpoint and"
    " target (the denominator of compare_differences)",
    "compare_endpoints_overflowed": "--compare: distinct endpoints beyond"
    " --compare-max-endpoints, counted under endpoint=\"other\"",
}


class StatsOutput:
    def __init__(self, loop: Loop, prog: str, stats: Stats, log: logging.Logger,
                 lines: Callable[[], List[str]], args: argparse.Namespace) -> None:
        self.loop = loop
        self.prog = prog
        self.stats = stats
        self.log = log
        self.lines = lines
        self.interval = max(0.05, float(getattr(args, "stats_interval", 30.0)))
        self.json_path = getattr(args, "stats_json", None)
        self.metrics = None
        self.started = time.time()
        spec = getattr(args, "metrics", None)
        if spec:
            from ..io.metrics import MetricsServer, parse_hostport

            host, port = parse_hostport(spec)
            self.metrics = MetricsServer(loop, host, port, self.render)
            log.log(25, "serving Prometheus metrics on %s:%d", *self.metrics.address[:2])

    def render(self) -> str:
        from ..io.metrics import render_prometheus

        return render_prometheus("pycopy_" + self.prog, self.stats.snapshot(), GAUGES, HELP)

    def start(self) -> None:
        self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.emit()
        self.loop.call_later(self.interval, self._tick)

    def emit(self) -> None:
        for line in self.lines():
            self.log.info("%s", line)
        if self.json_path:
            from ..io.metrics import write_stats_json

            try:
                write_stats_json(self.json_path, self.stats.snapshot(),
                                 {"program": self.prog, "started": self.started,
                                  "time": time.time()})
            except OSError as exc:
                self.log.warning("cannot write %s: %s", self.json_path, exc.strerror)

    def final(self) -> None:
        self.emit()
        if self.metrics is not None:
            self.metrics.close()
