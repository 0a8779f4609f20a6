"""SIGUSR1 reopens the log file (-l) of either command, so that logrotate can
move it away without copytruncate and without losing a line (issue 12).
SIGHUP keeps its C meaning (stop; ignored with -d)."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, List, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from ..io.loop import Loop


def reopen_logs() -> Tuple[int, List[str]]:
    """Reopen every log file of the ``pycopy`` logger (after logrotate moved it).

    (files reopened, errors): a new file that cannot be opened (say logrotate
    created it for another user) leaves that handler on its old file."""
    n = 0
    errors: List[str] = []
    for h in logging.getLogger("pycopy").handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                try:
                    stream = h._open()
                except OSError as exc:
                    errors.append("%s: %s" % (h.baseFilename, exc.strerror or exc))
                    continue
                old, h.stream = h.stream, stream
                if old is not None:
                    old.flush()
                    old.close()
                n += 1
            finally:
                h.release()
    return n, errors


def install_log_reopen(loop: "Loop", log: logging.Logger) -> None:
    """SIGUSR1 reopens the log file; the work is done by the loop, not in the handler."""
    def reopen() -> None:
        n, errors = reopen_logs()
        for err in errors:
            log.error("cannot reopen log file %s; still writing to the old file (SIGUSR1)", err)
        if n:
            log.log(25, "log file reopened (SIGUSR1)")

    signal.signal(signal.SIGUSR1, lambda _s, _f: loop.call_soon_threadsafe(reopen))
