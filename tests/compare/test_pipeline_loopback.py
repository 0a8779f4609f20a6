"""The summariser and the report together, on real HTTP servers (loopback).

Three real HTTP/1.1 servers play online, baseline and candidate; every answer
of all three carries a timestamp, a random id and a shuffled list. The
candidate differs in three planted ways (``/orders`` answers 500, ``/items``
is 50 ms slower, ``/users``' ``name`` changed). A client sends the same
requests to each (keep-alive, partly pipelined, a chunked answer, HEAD, a
POST body) and feeds the bytes both ways to ``core.answers.Exchange``; the
summaries become ``--compare`` records and ``pycopy-compare --baseline``
must name exactly the three planted regressions.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pycopy_engine.compare.cli import main
from pycopy_engine.core.answers import Exchange

N = 20  # requests per endpoint


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()  # head and body are separate writes: no Nagle wait between them
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status, body, ctype, chunked=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if chunked:
            for i in range(0, len(body), 23):
                piece = body[i:i + 23]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def _noise(self):
        tags = ["a", "b", "c", "d", "e"]
        random.shuffle(tags)
        return {"ts": time.time(), "rid": uuid.uuid4().hex, "tags": tags}

    def do_GET(self):
        role = self.server.role  # type: ignore[attr-defined]
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "health":
            return self._send(200, b"ok %.6f\n" % time.time(), "text/plain")
        doc = self._noise()
        if parts[0] == "users":
            doc.update(id=int(parts[1]), plan="basic",
                       name=("User %s (new)" if role == "candidate" else "user-%s") % parts[1])
        elif parts[0] == "orders":
            if role == "candidate":
                return self._send(500, b"internal error\n", "text/plain")
            doc.update(order=parts[1], lines=[{"sku": "x-%d" % i} for i in range(3)])
        elif parts[0] == "items":
            if role == "candidate":
                time.sleep(0.05)
            doc.update(item=parts[1], price=9.5, stock=True)
        self._send(200, json.dumps(doc).encode(), "application/json",
                   chunked=parts[0] == "items")

    do_HEAD = do_GET

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        doc = self._noise()
        doc.update(query=json.loads(body)["q"], total=4)
        self._send(200, json.dumps(doc).encode(), "application/json", chunked=True)


def _server(role):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.role = role  # type: ignore[attr-defined]
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _requests(rng):
    """Batches of requests: the first of each round pipelined, the rest one by one."""
    batches = []
    for i in range(N):
        batches.append([
            b"GET /users/%d?i=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (rng.randrange(1, 10**6), i),
            b"GET /orders/%016x HTTP/1.1\r\nHost: t\r\n\r\n" % rng.getrandbits(64),
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n",
        ])
        batches.append([b"GET /items/%s HTTP/1.1\r\nHost: t\r\n\r\n"
                        % str(uuid.UUID(int=rng.getrandbits(128))).encode()])
        q = json.dumps({"q": "w%d" % i}).encode()
        batches.append([b"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(q), q)])
        batches.append([b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n"])
    return batches


def _drive(port, batches):
    x = Exchange(port)
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for batch in batches:
            data = b"".join(batch)
            s.sendall(data)
            x.request_data(data, time.monotonic())
            want = len(out) + len(batch)
            while len(out) < want:
                got = s.recv(65536)
                assert got, "the server closed the connection"
                x.answer_data(got, time.monotonic())
                out += x.take()
        flow = "%s:%d" % s.getsockname()
    x.close(time.monotonic())
    out += x.take()
    assert x.errors == 0
    return flow, out


def test_real_servers_through_summariser_and_report(tmp_path):
    servers = {role: _server(role) for role in ("online", "baseline", "candidate")}
    try:
        batches = _requests(random.Random(7))
        runs = {role: _drive(srv.server_address[1], batches) for role, srv in servers.items()}
    finally:
        for srv in servers.values():
            srv.shutdown()
            srv.server_close()
    name = {role: "127.0.0.1:%d" % srv.server_address[1] for role, srv in servers.items()}
    flow, online = runs["online"]
    assert len(online) == 6 * N and [s.n for s in online] == list(range(6 * N))
    with open(tmp_path / "compare-20261202-000000.jsonl", "w") as fh:
        for i, s in enumerate(online):
            answers = {"online": s.answer}
            for role in ("baseline", "candidate"):
                other = runs[role][1][i]
                assert other.req == s.req  # the same bytes went to every server
                answers[name[role]] = other.answer
            fh.write(json.dumps({"t": s.t, "flow": flow, "n": s.n, "proto": s.proto,
                                 "req": s.req, "answers": answers}) + "\n")
    # what the summariser saw of the candidate's special answers
    cand = runs["candidate"][1]
    assert {a.answer["status"] for a in cand if a.req["path"].startswith("/orders")} == {500}
    assert all(a.answer["first"] >= 45.0 for a in cand if a.req["path"].startswith("/items"))
    assert all("fields" in a.answer for a in cand if a.req["method"] == "POST")
    assert main([str(tmp_path), "--baseline", name["baseline"], "-q"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    got = {(g["endpoint"], g["target"], g["kind"], g["field"]) for g in summary["regressions"]}
    c = name["candidate"]
    assert got == {("GET /orders/{id}", c, "status", None), ("GET /items/{id}", c, "latency", None),
                   ("GET /users/{id}", c, "field", "name")}, summary["regressions"]
    assert set(summary["endpoints"]) == {"GET /users/{id}", "GET /orders/{id}", "GET /health",
                                         "GET /items/{id}", "POST /search", "HEAD /health"}
