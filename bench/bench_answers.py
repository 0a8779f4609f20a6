"""Cost of the answer summariser (issue 9; prints figures, not a test).

core.answers.Exchange alone, in memory, on one core (CPU time of the process;
the keep-alive figures are the best of ``--rounds`` rounds):

1. keep-alive: small JSON answers (a ~300-byte body, parsed into fields) and
   small text answers, request and answer each in one segment: microseconds
   per request/answer pair, the summary's ``to_json`` included;
2. large bodies in 1,448-byte segments (Content-Length and chunked): MB/s
   of answer bytes summarised (size + digest, no JSON).

    python3 bench/bench_answers.py [--pairs 20000] [--rounds 5] [--mb 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pycopy_engine.core.answers import Exchange  # noqa: E402
from pycopy_engine.core.http1 import flatten  # noqa: E402

REQ = b"GET /users/42?x=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: b/1\r\nAccept: */*\r\n\r\n"
DOC = {"id": 42, "name": "user-42", "ts": 1764633600.123, "request_id": "9f" * 16,
       "tags": ["a", "b", "c", "d", "e"], "plan": {"kind": "basic", "until": "2027-01-01"},
       "items": [{"sku": "x-%d" % i, "qty": i} for i in range(4)]}


def _answer(body: bytes, ctype: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nServer: bench\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n"
            b"Content-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def pairs(n: int, answer: bytes, rounds: int) -> float:
    """Best of ``rounds`` rounds of ``n // rounds`` pairs (a busy machine only adds time)."""
    x = Exchange(80)
    per_round = max(1, n // rounds)
    best = float("inf")
    i = 0
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(per_round):
            x.request_data(REQ, i * 1e-3)
            x.answer_data(answer, i * 1e-3 + 5e-4)
            for s in x.take():
                s.to_json()  # as the --compare writer does
            i += 1
        best = min(best, (time.process_time() - t) / per_round * 1e6)
    return best


def stream(mb: int, chunked: bool) -> float:
    seg = 1448
    total = mb << 20
    x = Exchange(80)
    x.request_data(b"GET /big HTTP/1.1\r\n\r\n", 0.0)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked
               else b"Content-Length: %d\r\n\r\n" % total))
    x.answer_data(head, 0.0)
    payload = bytes(range(256)) * (seg // 256 + 1)
    if chunked:  # one 16 KiB chunk = about 11 segments, as a server's write would give
        chunk = payload * 12
        piece = b"%x\r\n" % (16384) + (chunk * 2)[:16384] + b"\r\n"
        segs = [piece[i:i + seg] for i in range(0, len(piece), seg)]
        rounds = total // 16384
    else:
        segs = [payload[:seg]]
        rounds = total // seg
    t = time.process_time()
    for _ in range(rounds):
        for s in segs:
            x.answer_data(s, 0.0)
    elapsed = time.process_time() - t
    sent = rounds * sum(len(s) for s in segs)
    return sent / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="keep-alive figures: best round of these")
    a = ap.parse_args()
    js = _answer(json.dumps(DOC).encode(), b"application/json")
    tx = _answer(b"x" * 300, b"text/plain")
    print("keep-alive, JSON answer (%d B, %d fields): %.1f us per request/answer"
          % (len(js), len(flatten(DOC)[0]), pairs(a.pairs, js, a.rounds)))
    print("keep-alive, text answer (%d B): %.1f us per request/answer" % (len(tx), pairs(a.pairs, tx, a.rounds)))
    print("large body, Content-Length, 1448-B segments: %.0f MB/s" % stream(a.mb, False))
    print("large body, chunked 16 KiB, 1448-B segments: %.0f MB/s" % stream(a.mb, True))


if __name__ == "__main__":
    main()
