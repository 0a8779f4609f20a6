"""SIGUSR1 reopens the log file (-l) of either command, so that logrotate can
move it away without copytruncate and without losing a line (issue 12).
SIGHUP keeps its C meaning (stop; ignored with -d)."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..io.loop import Loop


def reopen_logs() -> int:
    """Reopen every log file of the ``pycopy`` logger (after logrotate moved it)."""
    n = 0
    for h in logging.getLogger("pycopy").handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                if h.stream is not None:
                    h.stream.flush()
                    h.stream.close()
                h.stream = h._open()
                n += 1
            finally:
                h.release()
    return n


def install_log_reopen(loop: "Loop", log: logging.Logger) -> None:
    """SIGUSR1 reopens the log file; the work is done by the loop, not in the handler."""
    def reopen() -> None:
        if reopen_logs():
            log.log(25, "log file reopened (SIGUSR1)")

    signal.signal(signal.SIGUSR1, lambda _s, _f: loop.call_soon_threadsafe(reopen))
