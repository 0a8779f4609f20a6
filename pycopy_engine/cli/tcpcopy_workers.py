"""``tcpcopy --workers N``: N replaying processes under one supervisor
(pycopy_engine/io/workers.py).

Each worker is a whole tcpcopy: its own sessions, its own control links to
every intercept (its own hello and CLIENT_ADDs, so a C intercept serves it
as it would several tcpcopy instances), its own raw sender.  Flows are
shared out so that each stays in one worker:

* live (``-i``, required): one AF_PACKET capture per worker, all in one
  PACKET_FANOUT group (hash of the flow, fragments reassembled first); the
  workers start reading once every one has joined, and discard what their
  capture held before;
* offline (``-i FILE`` / ``--pcap``): every worker reads the file and keeps
  the flows whose symmetric flow hash % N is its index
  (core/flowhash.py).

Client ports: worker *i* uses only the ports p with (p - 1024) % N == i
(core/portpool.py ``worker_port``), copy 0 included, so ``-n``, ``-f`` and
collisions probing never hand two workers the same port.  ``-m`` bounds
each worker at its share (-m / N).  ``--metrics`` and ``--stats-json`` are
served by the supervisor, merged; ``-P`` is the supervisor's PID.
Refused with workers: ``--compare`` and ``--no-assistant`` (one drop rule
and one lock per host), a live capture without ``-i``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import signal

from ..core.engine import EngineConfig
from ..core.stats import Stats
from ..errors import ConfigError, PycopyError
from ..io import workers
from .common import remove_pid, write_pid
from .logreopen import reopen_logs
from .statsout import GAUGES, HELP, MERGE_RULES

MAX_WORKERS = 64


def check_workers_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 on what --workers cannot do (after the offline file is known)."""
    n = args.workers
    if n <= 1:
        return
    if args.compare:
        p.error("option --workers: invalid value %d with --compare: the comparison records"
                " are written by one process; use --workers 1" % n)
    if args.no_assistant:
        p.error("option --workers: invalid value %d with --no-assistant: own-address mode"
                " holds one drop rule and lock per host; use --workers 1" % n)
    if not args.offline_file and not args.iface:
        p.error("option --workers: invalid value %d without -i: the workers share the capture"
                " with PACKET_FANOUT on AF_PACKET sockets; name the interfaces with -i"
                " (e.g. -i eth0)" % n)


def worker_args(args: argparse.Namespace, index: int, count: int,
                fanout_group: int) -> argparse.Namespace:
    """A worker's options: no --metrics, --stats-json or -P of its own."""
    out = copy.copy(args)
    out.metrics = None
    out.stats_json = None
    out.pidfile = None
    out.worker = (index, count)
    out.fanout_group = fanout_group
    return out


def worker_config(cfg: EngineConfig, index: int, count: int) -> EngineConfig:
    return dataclasses.replace(cfg, worker=(index, count),
                               mem_limit=max(1 << 20, cfg.mem_limit // count))


def _reopen(log: logging.Logger) -> None:
    n, errors = reopen_logs()
    for err in errors:
        log.error("cannot reopen log file %s; still writing to the old file (SIGUSR1)", err)
    if n:
        log.log(25, "log file reopened (SIGUSR1)")


def run_tcpcopy_workers(args: argparse.Namespace, cfg: EngineConfig,
                        log: logging.Logger) -> int:
    from .common import _DAEMON
    from .tcpcopy_app import TcpCopyApp

    n = args.workers

    def child_main(index: int) -> int:
        w = workers.current()
        assert w is not None
        try:
            app = TcpCopyApp(worker_args(args, index, n, w.fanout_group),
                             worker_config(cfg, index, n), Stats(), log)
        except PermissionError as exc:
            log.error("%s", exc.strerror if getattr(exc, "strerror", None) else exc)
            return 1
        except PycopyError as exc:
            log.error("%s", exc)
            return 1
        return app.run()

    stop = [signal.SIGINT, signal.SIGTERM] + ([] if _DAEMON else [signal.SIGHUP])
    try:
        sup = workers.Supervisor(
            n, name="tcpcopy", log=log, metrics_addr=args.metrics, stats_json=args.stats_json,
            stats_interval=args.stats_interval, gauges=GAUGES, help_text=HELP,
            merge_rules=MERGE_RULES, ready_timeout=120.0, stop_grace=10.0,
            finish_ok=bool(args.offline_file), stop_signals=stop, on_reopen=lambda: _reopen(log))
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit("tcpcopy: %s" % exc) from None
    log.log(25, "--workers %d: %s", n,
            "each replays the flows of its hash slot of %s" % args.offline_file
            if args.offline_file else "capture shared by flow (PACKET_FANOUT on %s)" % args.iface)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sup.start(child_main)
    write_pid(args.pidfile)
    try:
        status = sup.run()
    finally:
        remove_pid(args.pidfile)
    log.log(25 if status == 0 else logging.ERROR, "all %d workers ended, exit status %d", n, status)
    return status
