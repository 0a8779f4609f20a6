"""Statistics a machine can read: an atomic JSON file and a Prometheus endpoint.

``write_stats_json`` rewrites a file atomically (temporary file in the same
directory, fsync, rename), so a reader never sees half a file.

``render_prometheus`` turns a ``Stats.snapshot()`` into the Prometheus text
format 0.0.4: ``"name"`` becomes the counter ``<prefix>_name_total``,
``"name:reason"`` becomes ``<prefix>_name_total{reason="reason"}``
(``"name:label=value"``, e.g. ``"brake_trips:target=10.0.0.12:80"``, gives
``{target="10.0.0.12:80"}``; several named labels are joined by a tab,
``"name:endpoint=GET /x\\ttarget=10.0.0.12:80\\tkind=status"``, see
``core.stats.labelled``), and names listed as gauges lose the ``_total``
suffix.

``MetricsServer`` is a tiny non-blocking HTTP/1.0-style server on the
project's event loop (``add_reader``/``add_writer``/``call_later``): it answers
``GET /metrics`` and closes the connection after every response.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from pycopy_engine.errors import ConfigError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_NAMED_LABEL = re.compile(r"^([a-z_][a-z0-9_]*)=(.*)$", re.S)


# -- JSON file ------------------------------------------------------------------


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/Infinity
    return v


def write_stats_json(path: str, snapshot: Mapping[str, float], extra: Mapping[str, Any]) -> None:
    """Atomically replace ``path`` with ``{**extra, "counters": snapshot}``.

    ``counters`` keeps the raw keys of ``core.stats`` (``"drop:pure_ack"``);
    non-finite values (a broken gauge) are written as ``null``.
    """
    doc = dict(extra)
    doc["counters"] = {k: _json_value(snapshot[k]) for k in sorted(snapshot)}
    data = json.dumps(doc, indent=1, sort_keys=False, allow_nan=False).encode() + b"\n"
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# -- Prometheus text format -----------------------------------------------------------


def metric_name(prefix: str, name: str) -> str:
    """A valid metric name: invalid characters become ``_``; no leading digit."""
    full = _BAD_NAME_CHARS.sub("_", f"{prefix}_{name}" if prefix else name)
    if not full or full[0].isdigit():
        full = "_" + full
    return full


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def render_prometheus(
    prefix: str,
    snapshot: Mapping[str, float],
    gauges: Iterable[str] = (),
    help_text: Mapping[str, str] | None = None,
) -> str:
    """Render a stats snapshot as Prometheus text format 0.0.4.

    ``gauges`` names (the part before any ``:``) are exported as gauges;
    everything else is a counter with the ``_total`` suffix.  ``help_text``
    maps a name to its ``# HELP`` line (a generic one is used otherwise).
    """
    gauge_set = set(gauges)
    helps = help_text or {}
    families: dict[str, list[tuple[str | None, float]]] = {}
    for key, value in snapshot.items():
        name, sep, reason = key.partition(":")
        families.setdefault(name, []).append((reason if sep else None, value))
    lines: list[str] = []
    for name in sorted(families):
        is_gauge = name in gauge_set
        full = metric_name(prefix, name)
        if not is_gauge and not full.endswith("_total"):
            full += "_total"
        text = helps.get(name) or f"pycopy {'gauge' if is_gauge else 'counter'} {name}"
        lines.append(f"# HELP {full} {escape_help(text)}")
        lines.append(f"# TYPE {full} {'gauge' if is_gauge else 'counter'}")
        series = families[name]
        series.sort(key=lambda s: (s[0] is not None, s[0] or ""))
        for label, value in series:
            if label is None:
                lines.append(f"{full} {format_value(value)}")
            else:
                lines.append(f"{full}{{{_labels(label)}}} {format_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _labels(label: str) -> str:
    """The label set of a ``"name:…"`` key's part after the colon."""
    parts = label.split("\t")
    named = [_NAMED_LABEL.match(p) for p in parts]
    if all(named) and len({m.group(1) for m in named if m}) == len(named):
        return ",".join(f'{m.group(1)}="{escape_label_value(m.group(2))}"' for m in named if m)
    return f'reason="{escape_label_value(label)}"'


# -- HTTP endpoint ---------------------------------------------------------------


def parse_hostport(spec: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all addresses) or ``[v6]:PORT`` for ``--metrics``."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics wants HOST:PORT, got {spec!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Conn:
    __slots__ = ("sock", "inbuf", "out", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = b""
        self.timer: Any = None


class MetricsServer:
    """Serve ``GET /metrics`` (``render()`` gives the body) on the event loop."""

    MAX_REQUEST = 8192
    MAX_CONNS = 32
    TIMEOUT = 5.0

    def __init__(
        self, loop: Any, host: str, port: int, render: Callable[[], str], backlog: int = 16
    ) -> None:
        self.loop = loop
        self.render = render
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError as e:
            sock.close()
            raise ConfigError(f"--metrics {host}:{port}: cannot listen ({e.strerror})") from e
        sock.setblocking(False)
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.conns: dict[int, _Conn] = {}
        self.requests = 0  # answered requests (any status)
        self.errors = 0  # bad requests and dropped connections
        loop.add_reader(sock, self._accept)

    @property
    def port(self) -> int:
        return self.address[1]

    def _accept(self) -> None:
        for _ in range(16):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                return
            if len(self.conns) >= self.MAX_CONNS:
                self.errors += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[sock.fileno()] = conn
            conn.timer = self.loop.call_later(self.TIMEOUT, lambda c=conn: self._close(c, True))
            self.loop.add_reader(sock, lambda c=conn: self._read(c))

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, True)
            return
        if not data:
            self._close(conn, True)
            return
        conn.inbuf += data
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbuf.find(b"\n\n")
        if end < 0:
            if len(conn.inbuf) > self.MAX_REQUEST:
                self._respond(conn, 431, "Request Header Fields Too Large", "too large\n")
            return
        self._handle(conn, conn.inbuf[:end].decode("latin-1"))

    def _handle(self, conn: _Conn, head: str) -> None:
        parts = head.split("\r\n", 1)[0].split("\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(conn, 400, "Bad Request", "bad request\n")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._respond(conn, 405, "Method Not Allowed", "only GET\n", {"Allow": "GET, HEAD"})
            return
        if target != "/metrics":
            self._respond(conn, 404, "Not Found", "try /metrics\n")
            return
        try:
            body = self.render()
        except Exception as e:  # a rendering bug must not kill the engine's loop
            self._respond(conn, 500, "Internal Server Error", f"render failed: {e!r}\n")
            return
        self._respond(conn, 200, "OK", body, {"Content-Type": CONTENT_TYPE}, method == "HEAD")

    def _respond(
        self,
        conn: _Conn,
        code: int,
        reason: str,
        body: str,
        headers: Mapping[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        self.requests += 1
        if code >= 400:
            self.errors += 1
        payload = body.encode("utf-8")
        hdrs = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        hdrs["Content-Length"] = str(len(payload))
        hdrs["Connection"] = "close"
        head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        conn.out = head.encode("latin-1") + b"\r\n" + (b"" if head_only else payload)
        self.loop.remove_reader(conn.sock)
        self.loop.add_writer(conn.sock, lambda: self._write(conn))

    def _write(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, True)
            return
        conn.out = conn.out[n:]
        if not conn.out:
            self._close(conn, False)

    def _close(self, conn: _Conn, error: bool) -> None:
        fd = conn.sock.fileno()
        if fd < 0 or self.conns.get(fd) is not conn:
            return
        del self.conns[fd]
        if error:
            self.errors += 1
        if conn.timer is not None:
            conn.timer.cancel()
        self.loop.remove_reader(conn.sock)
        self.loop.remove_writer(conn.sock)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.sock.close()

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn, False)
        self.loop.remove_reader(self.sock)
        self.sock.close()
