"""-L: tcpcopy's intercept links back off when intercept accepts and then refuses
them (``--allow``, a wrong secret), reset the backoff only once a link was usable,
log the reason once per change, and call for re-registration once per reconnect.

Real sockets on loopback; the "intercept" is a listener in the same loop."""

from __future__ import annotations

import logging
import re
import socket
from typing import Callable, List

import pytest

from pycopy_engine.core.stats import Stats
from pycopy_engine.io.links import InterceptLinks
from pycopy_engine.io.loop import Loop


class Refuser:
    """Accepts and at once closes every connection, or holds it ``hold`` seconds."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepts: List[float] = []
        self.hold: Callable[[int], float] = lambda n: 0.0  # seconds to keep connection n
        self.held: List[socket.socket] = []
        loop.add_reader(self.sock, self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        self.accepts.append(self.loop.time())
        hold = self.hold(len(self.accepts))
        if hold <= 0:
            conn.close()
            return
        self.held.append(conn)
        self.loop.call_later(hold, conn.close)

    def close(self) -> None:
        self.loop.remove_reader(self.sock)
        self.sock.close()
        for c in self.held:
            c.close()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []  # warnings and errors
        self.delays: List[float] = []  # every "retrying in Xs", whatever its level

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.lines.append(msg)
        m = re.search(r"retrying in ([0-9.]+)s", msg)
        if m:
            self.delays.append(float(m.group(1)))


@pytest.fixture
def world():
    loop = Loop()
    ref = Refuser(loop)
    lines = Lines()
    logger = logging.getLogger("pycopy.tcpcopy")
    logger.addHandler(lines)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    reconnects: List[object] = []
    stats = Stats()
    links = InterceptLinks(loop, [("127.0.0.1", ref.port)], 1, stats, lambda recs: None,
                           lonely=True, on_reconnect=reconnects.append, min_backoff=0.05,
                           max_backoff=0.4, stable_after=0.3)
    yield loop, ref, links, lines, reconnects, stats
    links.close()
    ref.close()
    logger.removeHandler(lines)
    logger.setLevel(old_level)
    loop.close()


def run_for(loop: Loop, seconds: float) -> None:
    loop.call_later(seconds, loop.stop)
    loop.run()


def gaps(times: List[float]) -> List[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_refused_links_back_off_exponentially_up_to_the_cap(world):
    loop, ref, links, lines, reconnects, stats = world
    links.start()
    run_for(loop, 3.0)
    g = gaps(ref.accepts)
    # 0.05, 0.1, 0.2, 0.4, 0.4, ...: about 9 attempts in 3 s (60 at a fixed 0.05 s)
    assert 6 <= len(ref.accepts) <= 12, g
    assert lines.delays[:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4], lines.delays
    assert all(x >= 0.38 for x in g[3:]), g  # the real gaps between attempts follow it
    refused = [ln for ln in lines.lines if "refused: closed before the link was usable" in ln]
    assert len(refused) == 1, lines.lines  # the reason once, not at every attempt
    assert "retrying in 0.05s, backing off up to 0.4s" in refused[0]
    assert stats.c["control_refused"] == len(ref.accepts)
    # every accepted reconnect asked for re-registration exactly once
    assert len(reconnects) == len(ref.accepts) - 1
    assert len(set(map(id, reconnects))) == len(reconnects)


def test_backoff_resets_only_once_a_link_was_usable(world):
    loop, ref, links, lines, reconnects, stats = world
    # refused five times, then a link that stays up 0.5 s (> stable_after), then refused again
    ref.hold = lambda n: 0.5 if n == 6 else 0.0
    links.start()
    run_for(loop, 3.2)
    g = gaps(ref.accepts)
    assert len(g) >= 7, g
    # five refusals back off to the cap; the good link (6th) was up 0.5 s; after it
    # the link is retried at the minimum and backs off again from there
    assert lines.delays[:7] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.05, 0.1], lines.delays
    assert g[4] >= 0.38 and g[5] >= 0.5, g
    msgs = [ln for ln in lines.lines if "refused: closed before the link was usable" in ln]
    assert len(msgs) == 2, lines.lines  # logged again after the change (usable, then refused)
