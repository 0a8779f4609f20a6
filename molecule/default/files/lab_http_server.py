#!/usr/bin/env python3
"""Test-scaffolding HTTP service for the lab's online and target hosts.

Answers every GET/POST with "<hostname> <path>" and appends one line per
request to the log file: "<epoch> <METHOD> <path> <client-ip>:<client-port>".
The verify tests read that log on the target. Standard library only.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server_version = "pycopy-lab"
    log_lock = threading.Lock()
    log_file = None  # set in main()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        host, port = self.client_address[:2]
        with self.log_lock:
            self.log_file.write(f"{time.time():.6f} {self.command} {self.path} {host}:{port}\n")
            self.log_file.flush()
        body = f"{socket.gethostname()} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    Handler.log_file = open(args.log, "a", encoding="utf-8")  # noqa: SIM115
    ThreadingHTTPServer.daemon_threads = True
    # A real service's accept queue (socketserver's default of 5 overflows when a
    # burst of replayed SYNs arrives while the accept loop waits for the CPU: the
    # kernel then drops SYNs, which the lab must not blame on pycopy).
    ThreadingHTTPServer.request_queue_size = 128
    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
