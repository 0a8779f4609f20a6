"""``tcpcopy --compare DIR``: options, the online server's answer capture and
the JSON Lines writer (COMPARE.md §2; the joining is core/compare.py).

Records are buffered and written every ``FLUSH_INTERVAL`` seconds (never on
the capture path), one file ``DIR/compare-YYYYmmdd-HHMMSS.jsonl`` at a time,
rotated when it reaches ``--compare-max-mb``; the ``--compare-keep`` newest
files are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any, List, Optional

from ..core.compare import DEFAULT_TIMEOUT, Comparer
from ..core.compare_count import DEFAULT_MAX_ENDPOINTS
from ..core.stats import Stats
from ..io import bpf
from ..io.loop import Loop
from ..io.stamped import open_stamped_capture, read_stamped
from ..wire.control_ext import CAP_ANSWERS
from .common import int_range, opt_type

FLUSH_INTERVAL = 0.25  # the comparer's timer and the writer's batch period
MAX_BUFFER = 64 << 20  # records waiting for the disk beyond this are dropped, counted
EXT_WAIT = 5.0  # a link that has not accepted the extension by then: warn once


def add_compare_options(a: Any) -> None:
    a("--compare", dest="compare", metavar="DIR",
      help="record each replicated request with the online answer and every target's answer"
           " as JSON Lines in DIR (needs a pycopy intercept; see pycopy-compare)")
    a("--compare-max-mb", dest="compare_max_mb",
      type=opt_type("--compare-max-mb", int_range(1, 1 << 20), "bad size"), default=100,
      help="--compare: rotate the file at this size in MB (100)")
    a("--compare-keep", dest="compare_keep",
      type=opt_type("--compare-keep", int_range(1, 100000), "bad count"), default=10,
      help="--compare: keep this many files, the oldest are removed (10)")
    a("--compare-timeout", dest="compare_timeout",
      type=opt_type("--compare-timeout", float, "bad timeout"), default=DEFAULT_TIMEOUT,
      help="--compare: write a record this many seconds after its request even if answers"
           " are missing, once their connections made no progress for as long (they are"
           " null, with the reason in \"errors\") (5)")
    a("--compare-max-endpoints", dest="compare_max_endpoints",
      type=opt_type("--compare-max-endpoints", int_range(1, 100000), "bad count"),
      default=DEFAULT_MAX_ENDPOINTS,
      help="--compare: the live difference counters (--metrics, --stats-json) name this many"
           " endpoints, the first seen; the others are counted as endpoint \"other\" (%d)"
           % DEFAULT_MAX_ENDPOINTS)


def check_compare_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.compare:
        return
    if args.offline_file:
        p.error("option --compare: invalid with an offline capture file (%r): the online"
                " server's answers are observed live" % args.offline_file)
    if args.no_assistant:
        p.error("option --compare: not supported with --no-assistant yet (the target's answers"
                " come from intercept)")
    if not 0.1 <= args.compare_timeout <= 3600:
        p.error("option --compare-timeout: invalid value %r: must be 0.1..3600 s"
                % args.compare_timeout)
    d = args.compare
    if os.path.exists(d) and not os.path.isdir(d):
        p.error("option --compare: invalid value %r: not a directory" % d)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as exc:
        p.error("option --compare: invalid value %r: %s" % (d, exc.strerror or exc))
    if not os.access(d, os.W_OK | os.X_OK):
        p.error("option --compare: invalid value %r: not writable" % d)


def online_filter(maps: Any) -> str:
    """Both directions of the online service: for each map, ``dst port P and
    dst host H`` (without an online IP: ``and not dst host T``, so that the
    copies this host sends to a target T on the same port are not seen) or
    ``src port P [and src host H]``."""
    terms: List[str] = []
    for m in maps:
        tip = bpf.socket.inet_ntoa(m.target_ip)
        if m.online_ip:
            ip = bpf.socket.inet_ntoa(m.online_ip)
            both = ["dst port %d and dst host %s" % (m.online_port, ip),
                    "src port %d and src host %s" % (m.online_port, ip)]
        else:
            both = ["dst port %d and not dst host %s" % (m.online_port, tip),
                    "src port %d and not src host %s" % (m.online_port, tip)]
        for term in both:
            if term not in terms:
                terms.append(term)
    # pure ACKs say nothing the data segments do not: the kernel drops them
    return "tcp and (%s) and (%s)" % (" or ".join("(%s)" % t for t in terms), NOT_PURE_ACK)


NOT_PURE_ACK = ("(tcp[13] & 7 != 0) or "
                "((ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0)")


class JsonlWriter:
    def __init__(self, directory: str, max_bytes: int, keep: int, stats: Stats,
                 log: logging.Logger) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.keep = keep
        self.stats = stats
        self.log = log
        self.buf: List[bytes] = []
        self.buffered = 0
        self.f: Any = None
        self.size = 0
        self.path: Optional[str] = None
        self.failed = False

    def add(self, recs: List[dict]) -> None:
        c = self.stats.c
        for r in recs:
            line = (json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
            if self.buffered + len(line) > MAX_BUFFER:
                c["compare_dropped"] += 1
                continue
            self.buf.append(line)
            self.buffered += len(line)

    def _open(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = os.path.join(self.dir, "compare-%s.jsonl" % stamp)
        k = 0
        while os.path.exists(path):  # two rotations in one second
            k += 1
            path = os.path.join(self.dir, "compare-%s.%d.jsonl" % (stamp, k))
        self.f = open(path, "ab")
        self.path = path
        self.size = 0
        self._prune()

    def _prune(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self.dir)
                           if n.startswith("compare-") and n.endswith(".jsonl"))
        except OSError:
            return
        full = [os.path.join(self.dir, n) for n in names]
        full.sort(key=lambda p: (os.path.getmtime(p) if os.path.exists(p) else 0, p))
        for p in full[:max(0, len(full) - self.keep)]:
            if p != self.path:
                try:
                    os.unlink(p)
                except OSError:
                    pass

    def flush(self) -> None:
        if not self.buf:
            return
        lines, self.buf, self.buffered = self.buf, [], 0
        try:
            for line in lines:
                if self.f is None or self.size + len(line) > self.max_bytes and self.size:
                    if self.f is not None:
                        self.f.close()
                    self._open()
                self.f.write(line)
                self.size += len(line)
            self.f.flush()
            self.failed = False
        except OSError as exc:
            self.stats.c["compare_dropped"] += len(lines)
            self.stats.c["compare_write_errors"] += 1
            if not self.failed:
                self.failed = True
                self.log.error("--compare: cannot write in %s: %s", self.dir, exc.strerror or exc)

    def close(self) -> None:
        self.flush()
        if self.f is not None:
            self.f.close()
            self.f = None


class CompareOut:
    """Everything --compare adds to the tcpcopy process."""

    def __init__(self, app: Any) -> None:
        args = app.args
        self.app = app
        self.loop: Loop = app.loop
        self.log: logging.Logger = app.log
        eng = app.engine
        self.offset = time.time() - self.loop.time()  # wall clock - loop clock
        self.comparer = Comparer(app.stats, eng.flow_of, eng.replicated,
                                 timeout=args.compare_timeout, wall_offset=self.offset,
                                 max_endpoints=args.compare_max_endpoints)
        self.writer = JsonlWriter(args.compare, args.compare_max_mb << 20, args.compare_keep,
                                  app.stats, app.log)
        expr = online_filter(args.maps)
        ifaces = [i for i in (args.iface or "").split(",") if i] or None
        # both directions of the online service, in the order the kernel saw
        # them, with its timestamps: a tap that also sees outgoing frames
        self.capture = open_stamped_capture(ifaces, bpf.compile_filter(expr, bpf.DLT_RAW))
        self.log.log(25, "--compare: records in %s, online traffic observed: %s",
                     args.compare, expr)
        app.stats.add_gauge("compare_capture_drops",
                            lambda: self.capture.kernel_stats().get("drops", 0))
        for name in ("compare_records", "compare_dropped", "compare_timeouts"):
            app.stats.c[name] += 0  # exported from the start, at 0
        self._timer: Any = None

    caps = CAP_ANSWERS

    def start(self) -> None:
        self.loop.add_reader(self.capture.fileno(), self._on_online)
        self._timer = self.loop.call_later(FLUSH_INTERVAL, self._tick)
        self.loop.call_later(EXT_WAIT, self._check_ext)

    def _on_online(self) -> None:
        now = self.loop.time()
        offset = self.offset
        on_online = self.comparer.on_online
        # kernel capture times (wall clock) on the loop's clock; read time if none
        read_stamped(self.capture, lambda pkt, ts: on_online(
            pkt, now if ts is None else min(now, ts - offset)))

    def sent(self, tx: List[Any], now: float) -> None:
        on_sent = self.comparer.on_sent
        for pkt, _dst in tx:
            on_sent(pkt, now)

    def records(self, recs: List[bytes], now: float) -> None:
        on_record = self.comparer.on_record
        for rec in recs:
            on_record(rec, now)

    def items(self, items: List[tuple]) -> None:
        self.comparer.on_items(items, self.loop.time())

    def _tick(self) -> None:
        self.comparer.on_timer(self.loop.time())
        self.writer.add(self.comparer.take_records())
        self.writer.flush()
        self._timer = self.loop.call_later(FLUSH_INTERVAL, self._tick)

    def stat_line(self) -> str:
        c = self.app.stats.c
        return ("compare: records:%d, timeouts:%d, late answers:%d, dropped:%d, flows:%d, "
                "capture drops:%d" % (c["compare_records"], c["compare_timeouts"],
                                      c["compare_late_answers"], c["compare_dropped"],
                                      len(self.comparer.flows),
                                      self.capture.kernel_stats().get("drops", 0)))

    def _check_ext(self) -> None:
        links = self.app.links
        n, granted = links.live_count(), getattr(links, "ext_granted", 0)
        if n and granted < n:
            self.log.warning("--compare: %d of %d intercept link(s) did not accept the pycopy "
                             "extension (a C intercept?): the targets' answers will be missing",
                             n - granted, n)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.comparer.finish(self.loop.time())
        self.writer.add(self.comparer.take_records())
        self.writer.close()
        try:
            self.loop.remove_reader(self.capture.fileno())
        except Exception:
            pass
        self.capture.close()
