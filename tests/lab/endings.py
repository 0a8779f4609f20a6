"""Clients that end their connections the hard ways, run in the client namespace.

    python -m tests.lab.endings --host 10.231.1.11 --scenario half_request --count 50 --tag t1

Scenarios (one connection each, run ``--parallel`` at a time):

* ``half_request``: half a request line and headers, then RST;
* ``half_post``: a POST's headers and 30 KB of its 100 KB body, then RST;
* ``part_download``: ``GET /bytes/1048576``, read about 300 KB, then RST;
* ``big_then_small``: keep-alive, the 1 MiB download read in full, then a
  small request on the same connection, then FIN;
* ``keepalive_dyn``: keep-alive, ``--requests`` requests of dynamic pages
  (answers of random length) ``--gap`` seconds apart, then FIN; the client
  port is ``--base-port`` + i so that a firewall rule can drop the first SYN
  of these connections.

Prints a JSON object: ``{"connections": [{"scenario", "port", "ok", "error"}]}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

RST_LINGER = struct.pack("ii", 1, 0)


def _read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one HTTP response with Content-Length; returns the body length."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the response head")
        buf += data
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").lower()
    clen = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
    if not head.startswith("http/1.1 200"):
        raise ConnectionError("status " + head.split("\r\n", 1)[0])
    total = end + 4 + clen
    while len(buf) < total:
        data = sock.recv(262144)
        if not data:
            raise ConnectionError("closed in the response body")
        buf += data
    del buf[:total]
    return clen


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_LINGER)
    sock.close()


def run_one(args: argparse.Namespace, i: int) -> dict[str, Any]:
    sc, tag = args.scenario, args.tag
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(15)
    out: dict[str, Any] = {"scenario": sc, "i": i, "ok": False, "error": None}
    try:
        if sc == "keepalive_dyn":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", args.base_port + i))
        t0 = time.time()
        sock.connect((args.host, args.port))
        out["connect_s"] = round(time.time() - t0, 4)
        out["port"] = sock.getsockname()[1]
        host = f"Host: {args.host}\r\n"
        if sc == "half_request":
            sock.sendall(f"GET /{tag}/half/{i} HTTP/1.1\r\n{host}X-Pad: abc".encode())
            time.sleep(args.hold)
            _reset(sock)
        elif sc == "half_post":
            head = f"POST /{tag}/post/{i} HTTP/1.1\r\n{host}Content-Length: 102400\r\n\r\n"
            sock.sendall(head.encode() + bytes([i % 251]) * 30000)
            time.sleep(args.hold)
            _reset(sock)
        elif sc == "part_download":
            sock.sendall(f"GET /bytes/1048576?id={tag}-{i} HTTP/1.1\r\n{host}\r\n".encode())
            got = 0
            while got < 300000:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed early")
                got += len(data)
            out["read"] = got
            time.sleep(args.hold)
            _reset(sock)
        elif sc == "big_then_small":
            buf = bytearray()
            sock.sendall(f"GET /bytes/1048576?id={tag}-{i} HTTP/1.1\r\n{host}\r\n".encode())
            if _read_response(sock, buf) != 1 << 20:
                raise ConnectionError("short download")
            time.sleep(args.gap)
            sock.sendall(f"GET /{tag}/small/{i} HTTP/1.1\r\n{host}\r\n".encode())
            _read_response(sock, buf)
            time.sleep(args.hold)
            sock.close()
        elif sc == "keepalive_dyn":
            buf = bytearray()
            for j in range(args.requests):
                sock.sendall(f"GET /dyn/{tag}/{i}/{j} HTTP/1.1\r\n{host}\r\n".encode())
                _read_response(sock, buf)
                time.sleep(args.gap)
            sock.close()
        else:
            raise SystemExit(f"unknown scenario {sc!r}")
        out["ok"] = True
    except (OSError, ConnectionError, ValueError, IndexError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        sock.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=5)
    ap.add_argument("--tag", default="end")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--gap", type=float, default=0.02)
    ap.add_argument("--hold", type=float, default=0.05, help="pause before the ending")
    ap.add_argument("--base-port", type=int, default=50000)
    args = ap.parse_args(argv)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    nxt = iter(range(args.count))

    def worker() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            r = run_one(args, i)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(args.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump({"connections": sorted(results, key=lambda r: r["i"])}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
