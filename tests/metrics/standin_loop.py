"""A minimal event loop with the project's loop API, for tests only."""

from __future__ import annotations

import heapq
import itertools
import selectors
import time
from typing import Any, Callable


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class StandInLoop:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.cbs: dict[int, list[Any]] = {}
        self.timers: list[tuple[float, int, Handle, Callable[[], Any]]] = []
        self.seq = itertools.count()

    def time(self) -> float:
        return time.monotonic()

    def _set(self, sock: Any, slot: int, cb: Any) -> None:
        fd = sock if isinstance(sock, int) else sock.fileno()
        entry = self.cbs.get(fd, [None, None])
        entry[slot] = cb
        mask = (selectors.EVENT_READ if entry[0] else 0) | (
            selectors.EVENT_WRITE if entry[1] else 0
        )
        if fd in self.cbs:
            if mask:
                self.sel.modify(fd, mask, entry)
            else:
                self.sel.unregister(fd)
                del self.cbs[fd]
        elif mask:
            self.sel.register(fd, mask, entry)
            self.cbs[fd] = entry

    def add_reader(self, sock: Any, cb: Callable[[], Any]) -> None:
        self._set(sock, 0, cb)

    def remove_reader(self, sock: Any) -> None:
        self._set(sock, 0, None)

    def add_writer(self, sock: Any, cb: Callable[[], Any]) -> None:
        self._set(sock, 1, cb)

    def remove_writer(self, sock: Any) -> None:
        self._set(sock, 1, None)

    def call_later(self, delay: float, cb: Callable[[], Any]) -> Handle:
        h = Handle()
        heapq.heappush(self.timers, (self.time() + delay, next(self.seq), h, cb))
        return h

    def run_once(self, timeout: float = 0.05) -> None:
        for key, mask in self.sel.select(timeout):
            entry = key.data
            if mask & selectors.EVENT_READ and entry[0]:
                entry[0]()
            if mask & selectors.EVENT_WRITE and entry[1]:
                entry[1]()
        now = self.time()
        while self.timers and self.timers[0][0] <= now:
            _, _, h, cb = heapq.heappop(self.timers)
            if not h.cancelled:
                cb()
