"""A real HTTP client for the lab, run in the client namespace.

    python -m tests.lab.client --host 10.231.1.11 --requests 1000 --connections 4 \
        --mode keepalive --kind mixed --expect-server online --tag run1 --out result.json

``--mode keepalive`` spreads the requests over K persistent connections (one
thread each); ``--mode close`` opens one connection per request (with
``Connection: close``; the server closes first), K at a time.  ``--kind``:
``get`` (small page), ``upload`` (POST of ``--upload-size`` bytes), ``download``
(``GET /bytes/<--download-size>``), ``mixed`` (the three in turn) or ``api``
(``GET /api/users|orders|search|items/<tag>/<i>`` in turn, JSON answers; a
numeric tag makes one id of both: ``/api/users/<tag><i:06d>``).

Every response is verified (status 200, ``X-Server`` equal to
``--expect-server``, body as the server must answer).  The JSON result holds
counts and the list of (method, path, body sha256) actually sent, which tests
compare with the servers' logs.  Paths are unique: ``.../<tag>/<i>``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import sys
import threading
import time
from typing import Any

from tests.lab.httpserver import pattern

EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def upload_body(i: int, size: int) -> bytes:
    """The deterministic body of upload number ``i``."""
    return random.Random(i).randbytes(size)


API_KINDS = ("users", "orders", "search", "items")


class Plan:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        kinds = ["get", "upload", "download"] if args.kind == "mixed" else [args.kind]
        self.kinds = kinds

    def request(self, i: int) -> tuple[str, str, bytes]:
        kind = self.kinds[i % len(self.kinds)]
        tag = self.args.tag
        if kind == "upload":
            return "POST", f"/upload/{tag}/{i}", upload_body(i, self.args.upload_size)
        if kind == "download":
            return "GET", f"/bytes/{self.args.download_size}?id={tag}-{i}", b""
        if kind == "dyn":  # a body of a random size, chosen by each server on its own
            return "GET", f"/dyn/{tag}/{i}", b""
        if kind == "slow":  # answered 60 ms late
            return "GET", f"/delay/60/{tag}/{i}", b""
        if kind == "notfound":
            return "GET", f"/status/404/{tag}/{i}", b""
        if kind == "api":  # the /api/ JSON endpoints in turn
            api = API_KINDS[i % len(API_KINDS)]
            if tag.isdigit():  # one numeric id per request: endpoint GET /api/KIND/{id}
                return "GET", f"/api/{api}/{tag}{i:06d}", b""
            return "GET", f"/api/{api}/{tag}/{i}", b""
        return "GET", f"/r/{tag}/{i}", b""


def verify(
    method: str,
    path: str,
    body: bytes,
    status: int,
    server: str | None,
    data: bytes,
    expect: str | None,
) -> str | None:
    p = path.split("?", 1)[0]
    if p.startswith("/status/"):
        return None if status == int(p.split("/")[2]) else f"status {status}"
    if status != 200:
        return f"status {status}"
    if expect is not None and server != expect:
        return f"X-Server {server!r} != {expect!r}"
    if method == "POST":
        try:
            got = json.loads(data)
        except ValueError:
            return "bad JSON answer"
        if got.get("len") != len(body) or got.get("sha256") != hashlib.sha256(body).hexdigest():
            return "upload echo mismatch"
        return None
    p = path.split("?", 1)[0]
    if p.startswith("/bytes/"):
        n = int(p[7:])
        if len(data) != n or data != pattern(n):
            return f"download mismatch ({len(data)} of {n} bytes)"
        return None
    if p.startswith(("/delay/", "/status/")):
        return None if data.startswith(p.encode()) else "bad /delay/ body"
    if p.startswith("/dyn/"):
        return None if data and data == b"d" * len(data) else "bad /dyn/ body"
    if p.startswith("/api/"):
        try:
            doc = json.loads(data)
        except ValueError:
            return "bad JSON answer"
        return None if doc.get("kind") == p.split("/")[2] else "bad /api/ answer"
    if f"server {expect}".encode() not in data and expect is not None:
        return "page not marked with the server name"
    return None


class Result:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self.sent: list[tuple[int, str, str, str]] = []

    def add(self, i: int, method: str, path: str, body: bytes, err: str | None) -> None:
        sha = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA
        with self.lock:
            self.sent.append((i, method, path, sha))
            if err is None:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{method} {path}: {err}")


def _one(conn: http.client.HTTPConnection, plan: Plan, i: int, close: bool, res: Result) -> bool:
    method, path, body = plan.request(i)
    headers = {"Connection": "close"} if close else {}
    if body:
        headers["Content-Type"] = "application/octet-stream"
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        err = verify(
            method,
            path,
            body,
            resp.status,
            resp.getheader("X-Server"),
            data,
            plan.args.expect_server,
        )
    except (OSError, http.client.HTTPException) as exc:
        err = f"{type(exc).__name__}: {exc}"
    res.add(i, method, path, body, err)
    return err is None


def _worker(plan: Plan, indexes: list[int], res: Result) -> None:
    a = plan.args
    if a.mode == "keepalive":
        conn = http.client.HTTPConnection(a.host, a.port, timeout=a.timeout)
        for i in indexes:
            if not _one(conn, plan, i, False, res):
                conn.close()  # reconnects on the next request
            if a.delay:
                time.sleep(a.delay)
        conn.close()
    else:
        for i in indexes:
            conn = http.client.HTTPConnection(a.host, a.port, timeout=a.timeout)
            _one(conn, plan, i, True, res)
            conn.close()
            if a.delay:
                time.sleep(a.delay)


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan(args)
    res = Result()
    k = max(1, min(args.connections, args.requests))
    buckets: list[list[int]] = [[] for _ in range(k)]
    for i in range(args.requests):
        buckets[i % k].append(i)
    t0 = time.monotonic()
    threads = [threading.Thread(target=_worker, args=(plan, b, res), daemon=True) for b in buckets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    res.sent.sort()
    return {
        "ok": res.ok,
        "failed": res.failed,
        "errors": res.errors,
        "elapsed": round(elapsed, 3),
        "requests": [[m, p, s] for _, m, p, s in res.sent],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--mode", choices=["keepalive", "close"], default="keepalive")
    ap.add_argument("--kind", default="get", choices=[
        "get", "upload", "download", "mixed", "dyn", "slow", "notfound", "api"])
    ap.add_argument("--upload-size", type=int, default=100 * 1024)
    ap.add_argument("--download-size", type=int, default=1 << 20)
    ap.add_argument("--expect-server", default=None)
    ap.add_argument("--tag", default="t")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds between requests")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--out", help="write the JSON result here (default: stdout)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    print(f"ok {result['ok']} failed {result['failed']} in {result['elapsed']} s", file=sys.stderr)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
