"""A small real HTTP/1.1 server for the lab (selectors, one thread).

    python -m tests.lab.httpserver --port 80 --name online --log FILE [--ready FILE]

* keep-alive by default, ``Connection: close`` honoured (HTTP/1.0 closes
  unless it asks for keep-alive);
* request bodies by Content-Length (100 KB uploads and more);
* ``GET /bytes/N`` returns N deterministic bytes (:func:`pattern`);
* ``POST``/``PUT`` answer ``{"server", "len", "sha256"}`` of the body;
* ``GET /dyn/...`` a page of a random length (dynamic content: online and
  target answer it with different sizes);
* ``GET /api/KIND/...`` (KIND ``users``, ``orders``, ``search``, ``items``) a
  JSON answer whose ``noise`` fields differ on every request (a timestamp, a
  random id, a shuffled list); ``--candidate`` plants three known changes in
  them (:data:`CANDIDATE_CHANGES`), the comparison experiment's regressions;
* any other ``GET``/``HEAD`` (``/`` too) a small page marked with the name.

``--conn-log FILE`` adds one JSON line per connection when it ends: its
requests (method, path, status, body length, time), how it ended (``fin``: the
peer closed; ``rst``: reset by the peer; ``timeout``: idle longer than
``--idle-timeout``; ``server_close``: the server closed after
``Connection: close``; ``shutdown``: still open when the server stopped) and
the bytes of an unfinished request it held (``partial``, ``partial_head``).

Every response carries ``X-Server: <name>``.  One JSON line per request goes
to the log (method, path, body length, body sha256, client ip and port,
``conn``: the connection's number since the server started, server name),
flushed at least every 100 ms and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import selectors
import signal
import socket
import sys
import time
from typing import Any

_PAT_LEN = 1 << 20
_PAT = bytes((i * 131 + 7) % 251 for i in range(_PAT_LEN))
MAX_HEADER = 64 * 1024
MAX_BODY = 64 << 20
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def pattern(n: int) -> bytes:
    """The N deterministic bytes ``GET /bytes/N`` returns."""
    if n <= _PAT_LEN:
        return _PAT[:n]
    reps, rest = divmod(n, _PAT_LEN)
    return _PAT * reps + _PAT[:rest]


# what --candidate changes in the /api/ answers, and nothing else
CANDIDATE_CHANGES = {
    "users": ("field", "user.tier"),  # "free" becomes "paid"
    "orders": ("status", None),  # 500 instead of 200
    "search": ("latency", None),  # answered 50 ms later
}
API_TAGS = ("red", "green", "blue", "black", "white")


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


class _Conn:
    __slots__ = ("sock", "ip", "port", "serial", "inbuf", "out", "close_after", "closed", "reqs",
                 "opened", "last_io", "hold_until")

    def __init__(self, sock: socket.socket, addr: tuple[str, int], serial: int) -> None:
        self.sock = sock
        # the connection's number in this server's life: a client port can be
        # reused by a later connection once the server closed the earlier one
        self.serial = serial
        self.ip, self.port = addr[0], addr[1]
        self.inbuf = bytearray()
        self.out: list[memoryview] = []
        self.close_after = False
        self.closed = False
        self.reqs: list[dict[str, Any]] = []
        self.opened = self.last_io = time.time()
        self.hold_until = 0.0  # /delay/: nothing is sent before this (monotonic) time


class Server:
    def __init__(self, port: int, name: str, log_path: str | None, bind: str = "0.0.0.0",
                 conn_log: str | None = None, idle_timeout: float = 0.0,
                 candidate: bool = False) -> None:
        self.name = name
        self.candidate = candidate
        self.conn_log = open(conn_log, "a", buffering=1 << 16) if conn_log else None
        self.idle_timeout = idle_timeout
        self.conns: set[_Conn] = set()
        self.held: set[_Conn] = set()  # answers waiting for their /delay/
        self.rng = random.Random()
        self.sel = selectors.DefaultSelector()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((bind, port))
        self.lsock.listen(1024)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.log = open(log_path, "a", buffering=1 << 16) if log_path else None
        self.pending_log: list[str] = []
        self.stopping = False
        self.requests = 0
        self.accepted = 0

    # -- logging -------------------------------------------------------------
    def flush_log(self) -> None:
        if self.log is not None and self.pending_log:
            self.log.write("".join(self.pending_log))
            self.log.flush()
        self.pending_log.clear()
        if self.conn_log is not None:
            self.conn_log.flush()

    # -- connections ---------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            conn = _Conn(sock, addr, self.accepted)
            self.conns.add(conn)
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Conn, how: str = "fin") -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        if self.conn_log is not None:
            rec = {"event": "conn", "client_ip": conn.ip, "client_port": conn.port,
                   "server": self.name, "how": how, "requests": conn.reqs,
                   "partial": len(conn.inbuf), "partial_head": bytes(conn.inbuf[:64]).decode("latin-1"),
                   "opened": round(conn.opened, 6), "ended": round(time.time(), 6)}
            self.conn_log.write(json.dumps(rec, separators=(",", ":")) + "\n")
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, "rst")
            return
        if not data:
            self._close(conn, "fin")
            return
        conn.last_io = time.time()
        conn.inbuf += data
        self._parse(conn)
        self._flush(conn)

    def _parse(self, conn: _Conn) -> None:
        buf = conn.inbuf
        while not conn.close_after:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER:
                    self._close(conn, "bad_request")
                return
            head = bytes(buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                self._close(conn, "bad_request")
                return
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            try:
                clen = int(headers.get("content-length", "0"))
            except ValueError:
                self._close(conn, "bad_request")
                return
            if clen < 0 or clen > MAX_BODY:
                self._close(conn, "bad_request")
                return
            total = end + 4 + clen
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            conn_hdr = headers.get("connection", "").lower()
            if version == "HTTP/1.0":
                keep = conn_hdr == "keep-alive"
            else:
                keep = conn_hdr != "close"
            self._respond(conn, method, target, body, keep)
            if not keep:
                conn.close_after = True

    def _respond(self, conn: _Conn, method: str, target: str, body: bytes, keep: bool) -> None:
        self.requests += 1
        sha = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA
        rec = {
            "method": method,
            "path": target,
            "body_len": len(body),
            "body_sha256": sha,
            "client_ip": conn.ip,
            "client_port": conn.port,
            "conn": conn.serial,
            "server": self.name,
            "time": round(time.time(), 6),
        }
        path = target.split("?", 1)[0]
        status = 200
        ctype = "text/html"
        if method in ("POST", "PUT"):
            payload = json.dumps({"server": self.name, "len": len(body), "sha256": sha}).encode()
            ctype = "application/json"
        elif path.startswith("/bytes/"):
            try:
                n = int(path[7:])
            except ValueError:
                n = -1
            if n < 0 or n > MAX_BODY:
                payload = b"bad size\n"
                status = 400
            else:
                payload = pattern(n)
                ctype = "application/octet-stream"
        elif path.startswith(("/delay/", "/status/")):
            # /delay/MS/...: answered MS ms later; /status/CODE/...: that status (answers in
            # order: a delayed answer holds back the ones pipelined after it)
            try:
                num = int(path.split("/")[2])
            except (IndexError, ValueError):
                num = -1
            if path.startswith("/delay/") and 0 <= num <= 10000:
                conn.hold_until = max(conn.hold_until, time.monotonic() + num / 1000.0)
            elif path.startswith("/status/") and 200 <= num <= 599:
                status = num
            payload = f"{path} from {self.name}\n".encode()
        elif path.startswith("/api/"):
            status, payload = self._api(conn, path)
            ctype = "application/json"
        elif path.startswith("/dyn/"):
            payload = b"d" * self.rng.randrange(100, 4000)
        else:
            payload = (
                f"<html><body><h1>server {self.name}</h1><p>{method} {target}</p></body></html>\n"
            ).encode()
        # what was answered (extra keys: older readers ignore them)
        rec["status"] = status
        rec["resp_len"] = 0 if method == "HEAD" else len(payload)
        self.pending_log.append(json.dumps(rec, separators=(",", ":")) + "\n")
        conn.reqs.append({"method": method, "path": target, "status": status,
                          "body_len": len(body), "time": rec["time"]})
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nServer: pycopy-lab\r\nX-Server: {self.name}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode()
        if method == "HEAD":
            conn.out.append(memoryview(head))
        elif len(payload) < 16384:
            conn.out.append(memoryview(head + payload))
        else:
            conn.out.append(memoryview(head))
            conn.out.append(memoryview(payload))

    def _api(self, conn: _Conn, path: str) -> tuple[int, bytes]:
        """A JSON answer of /api/KIND/...: stable fields, noise fields, and with
        --candidate the planted change of KIND."""
        segs = path.split("/")
        kind = segs[2]
        last = segs[-1] if segs[-1] else segs[-2]
        ident = int(last) if last.isdigit() else 0
        tags = list(API_TAGS)
        self.rng.shuffle(tags)
        doc: dict[str, Any] = {
            "kind": kind, "id": ident,
            "ts": "%.6f" % time.time(), "request_id": "%016x" % self.rng.getrandbits(64),
            "tags": tags,
        }
        status = 200
        if kind == "users":
            doc["user"] = {"name": f"user{ident}", "tier": "free"}
            if self.candidate:
                doc["user"]["tier"] = "paid"
        elif kind == "orders":
            doc["total"] = ident * 3 % 1000
            if self.candidate:
                status = 500
        elif kind == "search":
            doc["hits"] = [ident, ident + 1]
            if self.candidate:
                conn.hold_until = max(conn.hold_until, time.monotonic() + 0.05)
        else:
            doc["stock"] = ident % 17
        return status, json.dumps(doc, separators=(",", ":")).encode()

    def _flush(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if conn.hold_until and time.monotonic() < conn.hold_until:
            self.held.add(conn)
            return
        out = conn.out
        while out:
            try:
                sent = conn.sock.send(out[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn, "rst")
                return
            conn.last_io = time.time()
            if sent < len(out[0]):
                out[0] = out[0][sent:]
                break
            out.pop(0)
        if out:
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        if conn.close_after:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._close(conn, "server_close")
            return
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    # -- main loop -----------------------------------------------------------
    def serve(self) -> None:
        next_flush = time.monotonic() + 0.1
        while not self.stopping:
            wait = 0.05
            if self.held:
                now = time.monotonic()
                for conn in [c for c in self.held if c.hold_until <= now or c.closed]:
                    self.held.discard(conn)
                    self._flush(conn)
                if self.held:
                    wait = max(0.0, min(wait, min(c.hold_until for c in self.held) - now))
            for key, mask in self.sel.select(wait):
                conn = key.data
                if conn is None:
                    self._accept()
                    continue
                if mask & selectors.EVENT_READ:
                    self._readable(conn)
                if mask & selectors.EVENT_WRITE and not conn.closed:
                    self._flush(conn)
            now = time.monotonic()
            if now >= next_flush:
                if self.idle_timeout:
                    old = time.time() - self.idle_timeout
                    for conn in [c for c in self.conns if c.last_io < old]:
                        self._close(conn, "timeout")
                self.flush_log()
                next_flush = now + 0.1
        for conn in list(self.conns):
            self._close(conn, "shutdown")
        self.flush_log()

    def close(self) -> None:
        self.flush_log()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        if self.log is not None:
            self.log.close()
        if self.conn_log is not None:
            self.conn_log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--name", required=True)
    ap.add_argument("--log", help="JSON-lines request log")
    ap.add_argument("--ready", help="file created once listening")
    ap.add_argument("--conn-log", help="JSON-lines log of each connection's ending")
    ap.add_argument("--idle-timeout", type=float, default=0.0,
                    help="close connections idle this many seconds (0: never)")
    ap.add_argument("--candidate", action="store_true",
                    help="plant the comparison experiment's changes in the /api/ answers")
    args = ap.parse_args(argv)
    server = Server(args.port, args.name, args.log, args.bind, args.conn_log, args.idle_timeout,
                    args.candidate)

    def on_signal(signum: int, frame: Any) -> None:
        server.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.ready:
        with open(args.ready + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(args.ready + ".tmp", args.ready)
    print(f"listening on {args.bind}:{args.port} as {args.name}", file=sys.stderr, flush=True)
    try:
        server.serve()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
