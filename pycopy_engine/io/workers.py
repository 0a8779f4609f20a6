"""Several worker processes under one supervisor: ``--workers N`` of either tool.

:func:`run_workers` forks N children once the options are parsed (before any
capture is opened: each child opens its own socket and joins the PACKET_FANOUT
group whose id the parent chose, :attr:`Worker.fanout_group`, one that no
other program in the network namespace uses: io/fanoutids.py), then
supervises them:

* SIGINT, SIGTERM and SIGHUP (the stop signals the caller names) are
  forwarded to every child by PID, and so is SIGUSR1 (log reopen; the
  parent's ``on_reopen`` runs too);
* a child that dies while nobody asked it to (killed, or exiting with a
  non-zero status; with ``finish_ok=False`` any exit) is logged with its exit
  status, and the others are stopped (SIGTERM, SIGKILL after ``stop_grace``):
  never half a replicator left running; the parent then exits non-zero;
* the children die with the parent (PR_SET_PDEATHSIG: SIGTERM, so they still
  clean up);
* the return value is the worst exit status (a child killed by signal S
  counts as 128 + S), leaving out the workers that died of a stop signal
  the supervisor forwarded or sent (they were asked to stop): a requested
  stop is 0, a failure is the failed worker's status (at least 1).

Start-up barrier: each child calls :meth:`Worker.ready` once its capture is
open (a member of the fanout group); the parent answers "go" when all are, so
a child can discard what its capture got while the group was incomplete.

Statistics: the user's ``--metrics HOST:PORT`` and ``--stats-json FILE`` are
served by the parent.  Each child answers the parent's queries with a
snapshot of its counters over a private channel (an AF_UNIX SOCK_SEQPACKET
socketpair, one message per snapshot) and sends a last one when it ends.  The
parent merges them (:func:`pycopy_engine.core.statsmerge.merge_snapshots`),
adds the gauges ``workers`` (N) and ``worker_up{worker="i"}``, and renders
them with :mod:`pycopy_engine.io.metrics`; the JSON file also gets each
worker's own counters under ``per_worker``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from pycopy_engine.core.statsmerge import merge_snapshots
from pycopy_engine.io.fanoutids import pick_group
from pycopy_engine.io.loop import Loop
from pycopy_engine.io.workerside import (
    MSG_GO,
    MSG_QUERY,
    MSG_READY,
    MSG_STATS,
    MSG_STOP,
    Worker,
    current,
    set_current,
    set_pdeathsig,
    tag_log_lines,
)

__all__ = ["Supervisor", "Worker", "current", "describe_status", "exit_code", "run_workers"]

MAX_MSG = 4 << 20
QUERY_TIMEOUT = 1.0  # a /metrics scrape waits at most this long for the workers' answers


def exit_code(wait_status: int) -> int:
    """A waitpid status as an exit code: 128 + S for a death by signal S."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def describe_status(code: int) -> str:
    if code > 128:
        try:
            return "killed by signal %d (%s)" % (code - 128, signal.Signals(code - 128).name)
        except ValueError:
            return "killed by signal %d" % (code - 128)
    return "exit status %d" % code


class _Child:
    __slots__ = ("index", "pid", "sock", "ready", "status", "snapshot", "final", "updated",
                 "cause")

    def __init__(self, index: int, pid: int, sock: socket.socket) -> None:
        self.index = index
        self.pid = pid
        self.sock = sock
        self.ready = False
        self.status: int | None = None
        self.snapshot: dict[str, float] = {}
        self.final = False
        self.updated = 0.0
        self.cause = False  # its death stopped the others


class Supervisor:
    """The parent's side; see the module docstring and :func:`run_workers`."""

    def __init__(self, n: int, *, name: str, log: logging.Logger, metrics_addr: str | None,
                 stats_json: str | None, stats_interval: float, gauges: Iterable[str],
                 help_text: Mapping[str, str] | None, merge_rules: Mapping[str, str] | None,
                 ready_timeout: float, stop_grace: float, finish_ok: bool,
                 stop_signals: Iterable[int], on_reopen: Callable[[], None] | None) -> None:
        if n < 1:
            raise ValueError(f"workers must be at least 1, not {n}")
        self.n = n
        self.name = name
        self.log = log
        self.stats_json = stats_json
        self.stats_interval = max(0.05, stats_interval)
        self.gauges = tuple(gauges) + ("workers", "worker_up")
        self.help_text = dict(help_text or {})
        self.help_text.setdefault("workers", "worker processes configured (--workers)")
        self.help_text.setdefault("worker_up", "1 while this worker process runs")
        self.merge_rules = dict(merge_rules or {})
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.finish_ok = finish_ok
        self.stop_signals = tuple(stop_signals)
        self.on_reopen = on_reopen
        self.parent_pid = os.getpid()
        # an id per network namespace: from the pid on, the first that no other
        # program's packet socket uses (io/fanoutids.py: joining theirs would
        # split their traffic and ours without an error)
        self.fanout_group, self.fanout_note = pick_group(self.parent_pid & 0xFFFF)
        self.children: list[_Child] = []
        self.stopping = False  # a stop was asked for (signal or a failed worker)
        self.failed = False
        self.go_sent = False
        self.stop_signals_sent: set[int] = set()  # stop signals forwarded on request
        self.started = time.time()
        self.loop = Loop()
        self.metrics: Any = None
        if metrics_addr:
            from pycopy_engine.io.metrics import MetricsServer, parse_hostport

            host, port = parse_hostport(metrics_addr)
            self.metrics = MetricsServer(self.loop, host, port, self.render)
            log.log(25, "serving Prometheus metrics of %d workers on %s:%d", n,
                    *self.metrics.address[:2])

    # -- start ---------------------------------------------------------------
    def start(self, child_main: Callable[[int], int]) -> None:
        sigs = set(self.stop_signals) | {signal.SIGUSR1, signal.SIGCHLD}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        try:
            for i in range(self.n):
                parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    parent_end.close()
                    self._child(i, child_end, child_main, old)  # never returns
                child_end.close()
                parent_end.setblocking(False)
                self.children.append(_Child(i, pid, parent_end))
            for sig in self.stop_signals:
                signal.signal(sig, self._on_stop_signal)
            signal.signal(signal.SIGUSR1, self._on_reopen_signal)
            signal.signal(signal.SIGCHLD, lambda _s, _f: self.loop.call_soon_threadsafe(self._reap))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for c in self.children:
            self.loop.add_reader(c.sock, functools.partial(self._on_message, c))
        self.log.log(25, "%d workers started (pids %s), capture fanout group %d (%s)", self.n,
                     ",".join(str(c.pid) for c in self.children), self.fanout_group,
                     self.fanout_note)
        self.loop.call_later(self.ready_timeout, self._ready_deadline)
        self.loop.call_soon(self._reap)  # a child that died before the handler was set

    def _child(self, index: int, sock: socket.socket, child_main: Callable[[int], int],
               old_mask: Iterable[int]) -> None:
        status = 1
        try:
            for sig in set(self.stop_signals) | {signal.SIGUSR1, signal.SIGCHLD}:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            set_pdeathsig(signal.SIGTERM)
            for c in self.children:
                c.sock.close()
            if self.metrics is not None:
                self.metrics.sock.close()
            self.loop.close()
            if os.getppid() != self.parent_pid:  # the parent died before prctl
                os._exit(1)
            worker = Worker(index, self.n, self.fanout_group, sock)
            set_current(worker)
            tag_log_lines(index)
            status = int(child_main(index) or 0)
            if worker.snapshot is not None and not worker.published_final:
                try:
                    worker.publish(final=True)
                except Exception:  # the app's gauges may read closed sockets by now
                    pass
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            logging.getLogger("pycopy").error("worker %d failed: %s", index,
                                              traceback.format_exc().strip())
            status = 1
        finally:
            for h in logging.getLogger("pycopy").handlers:
                try:
                    h.flush()
                except Exception:
                    pass
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    # -- messages --------------------------------------------------------------
    def _on_message(self, c: _Child) -> None:
        for _ in range(64):
            try:
                msg = c.sock.recv(MAX_MSG)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                self.loop.remove_reader(c.sock)
                return
            self._handle(c, msg)

    def _handle(self, c: _Child, msg: bytes) -> None:
        if msg == MSG_READY:
            c.ready = True
            if all(ch.ready for ch in self.children) and not self.stopping:
                self.go_sent = True
                for ch in self.children:
                    self._send(ch, MSG_GO)
                self.log.log(25, "all %d workers ready", self.n)
        elif msg[:1] == MSG_STATS:
            try:
                doc = json.loads(msg[1:])
                c.snapshot = {str(k): v for k, v in doc["c"].items()}
                c.final = c.final or bool(doc.get("final"))
                c.updated = time.time()
            except (ValueError, KeyError, AttributeError):
                self.log.warning("worker %d sent malformed statistics", c.index)

    def _send(self, c: _Child, msg: bytes) -> bool:
        try:
            c.sock.send(msg, socket.MSG_DONTWAIT)
            return True
        except OSError:
            return False

    def collect(self, timeout: float = QUERY_TIMEOUT) -> None:
        """Ask every running worker for fresh counters; wait for the answers
        at most ``timeout`` (a busy worker's last figures are used then)."""
        waiting = {c.sock.fileno(): c for c in self.children
                   if c.status is None and c.ready and self._send(c, MSG_QUERY)}
        stamp = {id(c): c.updated for c in waiting.values()}
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select(list(waiting), [], [], left)
            for fd in r:
                c = waiting[fd]
                self._on_message(c)
                if c.updated != stamp[id(c)]:
                    del waiting[fd]

    # -- statistics ------------------------------------------------------------
    def merged(self) -> tuple[dict[str, float], dict[str, Any]]:
        """(merged snapshot with the worker gauges, per-worker breakdown)."""
        snap = merge_snapshots([c.snapshot for c in self.children if c.snapshot],
                               self.merge_rules)
        snap["workers"] = self.n
        per: dict[str, Any] = {}
        for c in self.children:
            up = c.status is None
            snap["worker_up:worker=%d" % c.index] = 1 if up else 0
            per[str(c.index)] = {"pid": c.pid, "up": up, "exit_status": c.status,
                                 "counters": {k: c.snapshot[k] for k in sorted(c.snapshot)}}
        return snap, per

    def render(self) -> str:
        from pycopy_engine.io.metrics import render_prometheus

        self.collect()
        snap, _ = self.merged()
        return render_prometheus("pycopy_" + self.name, snap, self.gauges, self.help_text)

    def write_json(self, query: bool = True) -> None:
        if not self.stats_json:
            return
        from pycopy_engine.io.metrics import write_stats_json

        if query:
            self.collect()
        snap, per = self.merged()
        try:
            write_stats_json(self.stats_json, snap,
                             {"program": self.name, "started": self.started, "time": time.time(),
                              "workers": self.n, "per_worker": per})
        except OSError as exc:
            self.log.warning("cannot write %s: %s", self.stats_json, exc.strerror)

    def _json_tick(self) -> None:
        self.write_json()
        self.loop.call_later(self.stats_interval, self._json_tick)

    # -- signals and children -----------------------------------------------------
    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        self.stop_signals_sent.add(signum)
        self._signal_all(signum)

    def _on_reopen_signal(self, signum: int, _frame: Any) -> None:
        self._signal_all(signum)
        if self.on_reopen is not None:
            self.loop.call_soon_threadsafe(self.on_reopen)

    def _signal_all(self, signum: int) -> None:
        for c in self.children:
            if c.status is None and signum != signal.SIGUSR1 and not self.go_sent:
                self._send(c, MSG_STOP)  # still waiting for the go
            if c.status is None:
                try:
                    os.kill(c.pid, signum)
                except ProcessLookupError:
                    pass

    def _reap(self) -> None:
        for c in self.children:
            if c.status is not None:
                continue
            try:
                pid, wstatus = os.waitpid(c.pid, os.WNOHANG)
            except ChildProcessError:
                pid, wstatus = c.pid, 0
            if pid == 0:
                continue
            c.status = exit_code(wstatus)
            self._on_message(c)  # its last counters, if it sent them
            if self.stopping:
                level = logging.INFO if c.status == 0 else logging.WARNING
                self.log.log(level, "worker %d (pid %d) ended: %s", c.index, c.pid,
                             describe_status(c.status))
            elif c.status == 0 and self.finish_ok:
                self.log.log(25, "worker %d (pid %d) finished", c.index, c.pid)
            else:
                self._fail(c)
        if all(c.status is not None for c in self.children):
            self.loop.stop()

    def _status(self, c: _Child) -> int:
        """A worker's exit status; killed by a stop signal this supervisor
        forwarded or sent (before the worker set its handlers) counts as 0,
        unless that worker is the one whose death stopped the others."""
        code = c.status or 0
        if not c.cause and code - 128 in self.stop_signals_sent:
            return 0
        return code

    def _fail(self, c: _Child) -> None:
        self.failed = True
        self.stopping = True
        c.cause = True
        self.stop_signals_sent.add(signal.SIGTERM)
        others = [ch for ch in self.children if ch.status is None]
        self.log.error("worker %d (pid %d) died unexpectedly: %s; stopping the other %d"
                       " worker(s) (pids %s)", c.index, c.pid, describe_status(c.status or 0),
                       len(others), ",".join(str(ch.pid) for ch in others) or "-")
        self._signal_all(signal.SIGTERM)
        self.loop.call_later(self.stop_grace, self._kill_rest)

    def _kill_rest(self) -> None:
        for c in self.children:
            if c.status is None:
                self.log.error("worker %d (pid %d) still running %gs after SIGTERM: SIGKILL",
                               c.index, c.pid, self.stop_grace)
                try:
                    os.kill(c.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _ready_deadline(self) -> None:
        late = [c for c in self.children if not c.ready and c.status is None]
        if late and not self.stopping:
            self.log.error("worker(s) %s not ready after %gs; stopping all workers",
                           ",".join(str(c.index) for c in late), self.ready_timeout)
            self.failed = True
            self.stopping = True
            self.stop_signals_sent.add(signal.SIGTERM)
            self._signal_all(signal.SIGTERM)
            self.loop.call_later(self.stop_grace, self._kill_rest)

    # -- run -----------------------------------------------------------------------
    def run(self) -> int:
        if self.stats_json:
            self.loop.call_later(self.stats_interval, self._json_tick)
        try:
            self.loop.run()
        finally:
            for c in self.children:
                self._on_message(c)
            self.write_json(query=False)
            if self.metrics is not None:
                self.metrics.close()
            for c in self.children:
                c.sock.close()
            self.loop.close()
        worst = max(self._status(c) for c in self.children)
        if self.failed and worst == 0:
            worst = 1
        return worst


def run_workers(n: int, child_main: Callable[[int], int], *, name: str,
                log: logging.Logger | None = None, metrics_addr: str | None = None,
                stats_json: str | None = None, stats_interval: float = 30.0,
                gauges: Iterable[str] = (), help_text: Mapping[str, str] | None = None,
                merge_rules: Mapping[str, str] | None = None, ready_timeout: float = 60.0,
                stop_grace: float = 10.0, finish_ok: bool = False,
                stop_signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
                on_reopen: Callable[[], None] | None = None) -> int:
    """Run ``child_main(i)`` in N forked workers (i = 0..N-1) under a
    supervisor; returns the worst exit status (see the module docstring).

    ``name``: the program (metric prefix ``pycopy_<name>``); ``gauges``,
    ``help_text``: as :func:`pycopy_engine.io.metrics.render_prometheus`;
    ``merge_rules``: a name's rule when merging the workers' figures (see
    :mod:`pycopy_engine.core.statsmerge`); ``finish_ok``: a worker exiting 0
    is done (offline replay), not a failure.  Raises ConfigError (before
    any fork) when ``metrics_addr`` cannot be served.
    """
    sup = Supervisor(n, name=name, log=log or logging.getLogger("pycopy.workers"),
                     metrics_addr=metrics_addr, stats_json=stats_json,
                     stats_interval=stats_interval, gauges=gauges, help_text=help_text,
                     merge_rules=merge_rules, ready_timeout=ready_timeout, stop_grace=stop_grace,
                     finish_ok=finish_ok, stop_signals=stop_signals, on_reopen=on_reopen)
    sup.start(child_main)
    return sup.run()
