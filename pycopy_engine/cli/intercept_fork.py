"""intercept ``--workers N``: the parent process (fork, supervise, merged statistics).

The listening socket and the worker mesh are made here, before the fork.
Each worker runs an :class:`InterceptApp` and sends its counters' snapshot
up a pipe every statistics interval (one JSON line); the parent writes the
merged ``--stats-json`` and serves the merged ``--metrics`` (counters and
gauges summed over the workers).  SIGTERM/SIGINT/SIGHUP to the parent stop
every worker; a worker that dies stops the others, and the parent exits 1.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import os
import signal
from typing import Dict, List

from ..core.stats import Stats
from ..io.channel import listen
from ..io.loop import Loop
from ..io.workermesh import Mesh
from .common import install_stop_signals, remove_pid, write_pid
from .logreopen import install_log_reopen
from .statsout import StatsOutput


class _Merged(Stats):
    __slots__ = ("parts",)

    def __init__(self) -> None:
        super().__init__()
        self.parts: Dict[int, Dict[str, float]] = {}

    def snapshot(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for snap in self.parts.values():
            for k, v in snap.items():
                out[k] = out.get(k, 0) + (v if v is not None else 0)
        out["workers"] = len(self.parts)
        return out


def _child(index: int, args: argparse.Namespace, log: logging.Logger, mesh: Mesh,
           listener, group: int, wfd: int) -> int:
    from .intercept_app import InterceptApp

    wargs = copy.copy(args)
    wargs.metrics = None
    wargs.stats_json = None
    wargs.pidfile = None
    stats = Stats()
    app = InterceptApp(wargs, stats, log, index=index, mesh=mesh,
                       listener=listener if index == 0 else None, fanout_group=group)
    if index != 0 and listener is not None:
        listener.close()

    def report() -> None:
        line = json.dumps({"w": index, "s": stats.snapshot()}, allow_nan=False,
                          default=str).encode() + b"\n"
        try:
            os.write(wfd, line)
        except OSError:
            pass
        app.loop.call_later(min(1.0, app.out.interval), report)

    app.loop.call_soon(report)
    try:
        return app.run()
    finally:
        report()


def serve(args: argparse.Namespace, log: logging.Logger) -> int:
    n = args.workers
    listener = listen(args.bind, args.port)
    mesh = Mesh(n)
    group = os.getpid() & 0xFFFF
    pids: Dict[int, int] = {}
    pipes: Dict[int, int] = {}
    for i in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                for fd in pipes.values():
                    os.close(fd)
                code = _child(i, args, log, mesh, listener, group, w)
            except BaseException as exc:  # noqa: BLE001 - the worker reports and exits
                log.error("worker %d failed: %s", i, exc)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(w)
        pids[pid] = i
        pipes[i] = r
    listener.close()
    mesh.close()
    log.log(25, "intercept: %d workers (pids %s), fanout group %d", n,
            ",".join(str(p) for p in pids), group)
    return _supervise(args, log, pids, pipes)


def _supervise(args: argparse.Namespace, log: logging.Logger, pids: Dict[int, int],
               pipes: Dict[int, int]) -> int:
    loop = Loop()
    merged = _Merged()
    bufs: Dict[int, bytes] = {i: b"" for i in pipes}
    status = [0]
    loop_stopping = [False]

    def lines() -> List[str]:
        c = merged.snapshot()
        return ["workers:%d, records forwarded between workers:%d, routes broadcast:%d, "
                "unroutable forwarded:%d" % (c.get("workers", 0), c.get("records_forwarded", 0),
                                             c.get("routes_broadcast", 0),
                                             c.get("drop:forwarded_unroutable", 0))]

    out = StatsOutput(loop, "intercept", merged, log, lines, args)

    def readable(i: int) -> None:
        try:
            data = os.read(pipes[i], 1 << 20)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(pipes[i])
            return
        buf = bufs[i] + data
        *whole, bufs[i] = buf.split(b"\n")
        for line in whole:
            try:
                merged.parts[i] = json.loads(line)["s"]
            except (ValueError, KeyError):
                pass

    for i, fd in pipes.items():
        os.set_blocking(fd, False)
        loop.add_reader(fd, functools.partial(readable, i))

    def stop_all(signum: int = signal.SIGTERM) -> None:
        for pid in list(pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def reap() -> None:
        while pids:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            i = pids.pop(pid)
            code = os.waitstatus_to_exitcode(st)
            if not loop_stopping[0]:
                log.error("worker %d (pid %d) exited %d: stopping the others", i, pid, code)
                status[0] = 1
                loop_stopping[0] = True
                stop_all()
        if not pids:
            loop.stop()
            return
        loop.call_later(0.1, reap)

    def on_signal(signum: int) -> None:
        log.log(25, "signal %d received, stopping the workers", signum)
        loop_stopping[0] = True
        stop_all()

    write_pid(args.pidfile)
    install_stop_signals(on_signal)
    install_log_reopen(loop, log)
    reopen = signal.getsignal(signal.SIGUSR1)

    def usr1(signum: int, frame: object) -> None:  # reopen the log here and in every worker
        if callable(reopen):
            reopen(signum, frame)  # type: ignore[arg-type]
        stop_all(signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, usr1)
    loop.call_later(0.1, reap)
    out.start()
    try:
        loop.run()
        for i in pipes:  # the last snapshots
            readable(i)
    finally:
        out.final()
        remove_pid(args.pidfile)
    return status[0]
