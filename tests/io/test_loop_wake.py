"""Loop.call_soon_threadsafe (used by SIGUSR1's log reopen) wakes a loop that
is blocked waiting for a far timer."""

from __future__ import annotations

import os
import signal
import threading
import time

from pycopy_engine.io.loop import Loop


def test_call_soon_threadsafe_from_a_signal_handler_runs_at_once():
    with Loop() as loop:
        ran = []
        loop.call_later(5.0, loop.stop)  # the only timer: the loop would sleep 5 s

        def cb():
            ran.append(time.monotonic())
            loop.stop()

        old = signal.signal(signal.SIGUSR1, lambda _s, _f: loop.call_soon_threadsafe(cb))
        try:
            # sent from another thread while the loop sleeps in epoll_wait
            timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGUSR1))
            t0 = time.monotonic()
            timer.start()
            loop.run()
            timer.join()
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert ran and ran[0] - t0 < 1.0
