"""A worker's side of the supervisor of :mod:`pycopy_engine.io.workers`.

In a worker process, :func:`current` gives its :class:`Worker`: its index,
the number of workers, the PACKET_FANOUT group id the parent chose, and the
private channel to the parent (an AF_UNIX SOCK_SEQPACKET socket, one message
per datagram): ``R`` ready, ``G`` go, ``X`` stop before the go, ``Q`` a
query for counters, ``S`` + JSON ``{"c": snapshot, "final": bool}`` the
answer (or the last counters, sent when the worker ends).
"""

from __future__ import annotations

import ctypes
import json
import logging
import socket
from collections.abc import Mapping
from typing import Callable

from pycopy_engine.io.loop import Loop

MSG_READY = b"R"
MSG_GO = b"G"
MSG_QUERY = b"Q"
MSG_STATS = b"S"
MSG_STOP = b"X"  # to a worker not ready yet: stop (signals do not end its wait)
MAX_MSG = 4 << 20  # the largest message read
PR_SET_PDEATHSIG = 1

Snapshot = Callable[[], Mapping[str, float]]

_current: list[Worker] = []


def current() -> Worker | None:
    """In a worker process: its :class:`Worker`; elsewhere None."""
    return _current[0] if _current else None


class Worker:
    """A worker's side of the supervisor: its index, the fanout group id
    and the private channel to the parent."""

    def __init__(self, index: int, count: int, fanout_group: int, sock: socket.socket) -> None:
        self.index = index
        self.count = count
        self.fanout_group = fanout_group
        self.sock = sock
        self.snapshot: Snapshot | None = None
        self.published_final = False
        self._loop: Loop | None = None

    def ready(self) -> bool:
        """Tell the parent this worker is set up, and wait for the go (all
        workers are).  False: stop now (the parent is stopping or gone)."""
        try:
            self.sock.setblocking(True)
            self.sock.send(MSG_READY)
            while True:
                msg = self.sock.recv(MAX_MSG)
                if not msg or msg == MSG_STOP:
                    return False
                if msg == MSG_GO:
                    return True
                if msg == MSG_QUERY:
                    self.publish()
        except OSError:
            return False
        finally:
            self.sock.setblocking(False)

    def attach(self, loop: Loop, snapshot: Snapshot) -> None:
        """Answer the parent's queries from ``loop`` with ``snapshot()``."""
        self.snapshot = snapshot
        self._loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.sock, self._on_message)

    def _on_message(self) -> None:
        for _ in range(16):
            try:
                msg = self.sock.recv(MAX_MSG)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:  # the parent is gone (PR_SET_PDEATHSIG stops us too)
                if self._loop is not None:
                    self._loop.remove_reader(self.sock)
                return
            if msg == MSG_QUERY:
                self.publish()

    def publish(self, final: bool = False) -> None:
        """Send the counters to the parent (``final``: the last ones)."""
        if self.snapshot is None or self.published_final:
            return
        snap = dict(self.snapshot())
        data = MSG_STATS + json.dumps({"c": snap, "final": final}).encode()
        try:
            self.sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            return  # parent busy or gone: the next query gets fresh figures
        if final:
            self.published_final = True


def set_current(worker: Worker) -> None:
    _current[:] = [worker]


def set_pdeathsig(sig: int) -> None:
    """PR_SET_PDEATHSIG: the kernel sends ``sig`` to this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's SIGTERM forwarding still applies


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = "[worker %d] " % index

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_worker_tagged", False):
            record.msg = self.prefix + str(record.msg)
            record._worker_tagged = True
        return True


def tag_log_lines(index: int) -> None:
    """Every line a worker logs starts with ``[worker i]``."""
    tag = _WorkerTag(index)
    for h in logging.getLogger("pycopy").handlers:
        h.addFilter(tag)
