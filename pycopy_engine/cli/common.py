"""What both commands share: logging in the C tools' format, PID files,
daemonizing, signals, option value parsers that name the bad value."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from typing import Callable, List, Optional, Tuple

from .. import __version__

LEVELS = {"emerg": 50, "alert": 50, "crit": 50, "error": 40, "warn": 30, "notice": 25,
          "info": 20, "debug": 10}
logging.addLevelName(25, "notice")
logging.addLevelName(30, "warn")
logging.addLevelName(40, "error")
logging.addLevelName(50, "crit")
logging.addLevelName(20, "info")
logging.addLevelName(10, "debug")


class CFormatter(logging.Formatter):
    """``YYYY/MM/DD HH:MM:SS +mmm [level] message`` as tc_log.c writes it."""

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        msg = record.getMessage()
        if record.exc_info:
            msg += " (" + str(record.exc_info[1]) + ")"
        return "%s +%03d [%s] %s" % (time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(t)),
                                     int((t % 1) * 1000), record.levelname, msg)


def setup_logging(name: str, path: Optional[str], debug: bool = False) -> logging.Logger:
    root = logging.getLogger("pycopy")
    root.handlers.clear()
    if path:
        try:
            handler: logging.Handler = logging.FileHandler(path)
        except OSError as exc:
            die("cannot open log file %s: %s" % (path, exc.strerror), 1)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    return logging.getLogger("pycopy." + name)


def die(message: str, status: int = 1) -> None:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "pycopy"
    sys.stderr.write("%s: %s\n" % (prog, message))
    sys.stderr.flush()
    raise SystemExit(status)


class Parser(argparse.ArgumentParser):
    """argparse that exits 2 with 'option -X: message' on bad values."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        die(message, 2)


def ipv4(text: str) -> bytes:
    try:
        return socket.inet_aton(text) if text.count(".") == 3 else _bad()
    except OSError:
        return _bad()


def _bad() -> bytes:
    raise ValueError


def opt_type(name: str, conv: Callable[[str], object], what: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return conv(text)
        except (ValueError, TypeError) as exc:
            detail = str(exc) if str(exc) else what
            raise argparse.ArgumentTypeError("invalid value %r: %s" % (text, detail)) from None

    parse.__name__ = name
    return parse


def int_range(lo: int, hi: Optional[int] = None) -> Callable[[str], int]:
    def conv(text: str) -> int:
        v = int(text, 10)
        if v < lo or (hi is not None and v > hi):
            raise ValueError("must be %d..%s" % (lo, hi if hi is not None else "∞"))
        return v

    return conv


def parse_hostport_list(text: str, default_port: int) -> List[Tuple[str, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.partition(":")
        ipv4(host)
        p = int(port) if port else default_port
        if not 0 < p < 65536:
            raise ValueError("port %d out of range" % p)
        out.append((host, p))
    if not out:
        raise ValueError("empty list")
    return out


def write_pid(path: Optional[str]) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % os.getpid())
    os.replace(tmp, path)


def remove_pid(path: Optional[str]) -> None:
    if not path:
        return
    try:
        with open(path) as f:
            if int(f.read().strip() or 0) != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass


_DAEMON = False  # set by daemonize(): SIGHUP stays ignored


def daemonize() -> None:
    """fork, setsid, fork, stdio to /dev/null; SIGHUP ignored (as C -d)."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    global _DAEMON
    _DAEMON = True
    fd = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(fd, n)
    if fd > 2:
        os.close(fd)


def install_stop_signals(stop: Callable[[int], None]) -> None:
    """SIGINT, SIGTERM and SIGHUP mean "stop", as in C, whatever the parent
    left (nohup ignores SIGHUP); a daemon (-d) keeps ignoring SIGHUP."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    if not _DAEMON:
        sigs.append(signal.SIGHUP)
    for sig in sigs:
        signal.signal(sig, lambda s, _f: stop(s))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def version_line(prog: str) -> str:
    from .. import INTERNAL_VERSION

    return "%s (pycopy) %s, internal version %d" % (prog, __version__, INTERNAL_VERSION)


def reasons(stats_by_reason: dict) -> str:
    return ",".join("%s:%d" % kv for kv in sorted(stats_by_reason.items())) or "none"


def tune_gc() -> None:
    """Per-packet objects form no reference cycles: collect cycles rarely, and
    never walk the long-lived start-up objects (measured: the default gen-0
    threshold of 700 costs up to a third of the per-packet time under load)."""
    import gc

    if not hasattr(gc, "freeze"):  # PyPy: its own incremental collector
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(50000, 50, 100)


def read_secret(path: Optional[str]) -> Optional[bytes]:
    """The shared secret of --secret-file (surrounding white space removed)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        die("option --secret-file: cannot read %s: %s" % (path, exc.strerror), 2)
    if len(secret) < 16:
        die("option --secret-file: %s holds %d bytes; use at least 16" % (path, len(secret)), 2)
    return secret


def add_common_options(add: Callable[..., object], host_role: str) -> None:
    """Options both commands share: statistics outputs, the secret, doctor, help."""
    add("--stats-interval", type=opt_type("--stats-interval", float, "bad interval"), default=30.0,
        help="seconds between statistics lines (30)")
    add("--stats-json", metavar="FILE",
        help="rewrite this JSON file with all counters every interval")
    add("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics on this address")
    add("--secret-file", metavar="FILE",
        help="shared secret (at least 16 bytes) for pycopy-to-pycopy control links")
    add("--doctor", action="store_true",
        help="check this %s host's set-up and exit" % host_role)
    add("-h", "--help", action="help", help="show this help and exit")
