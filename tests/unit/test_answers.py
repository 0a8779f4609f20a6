"""The streaming answer summariser (issue 9): HTTP/1.x pairing and framing,
tcp mode, garbage, bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycopy_engine.core.answers import Exchange


def digest(b: bytes) -> str:
    return hashlib.blake2b(b, digest_size=16).hexdigest()


REQS = [
    b"GET /users/42?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /users/42 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /items HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"PUT /chunk HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\n\r\n",
    b"GET /cached HTTP/1.1\r\n\r\n",
]
JSON_BODY = b'{"id": 42, "user": {"name": "x", "tags": ["a", "b"]}, "items": [{"id": 7}], "ok": true}'
ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(JSON_BODY), JSON_BODY),
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",  # HEAD
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nLocation: /items/9\r\n"
    b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 77\r\n\r\n",
]
EXPECTED = [
    ("GET", "/users/42?x=1", 200, len(JSON_BODY), digest(JSON_BODY)),
    ("HEAD", "/users/42", 200, 0, digest(b"")),
    ("POST", "/items", 201, 2, digest(b"ok")),
    ("PUT", "/chunk", 200, 11, digest(b"hello world")),
    ("DELETE", "/x", 204, 0, digest(b"")),
    ("GET", "/cached", 304, 0, digest(b"")),
]


def untimed(summaries):
    out = []
    for s in summaries:
        d = s.to_json()
        d["answer"] = {k: v for k, v in d["answer"].items() if k not in ("first", "last")}
        out.append((s.n, s.proto, s.off, d))
    return out


def run(req_chunks, ans_chunks, close=True):
    x = Exchange(80)
    got = []
    for c in req_chunks:
        x.request_data(c, 1.0)
        got += x.take()
    for c in ans_chunks:
        x.answer_data(c, 2.0)
        got += x.take()
    if close:
        x.close(3.0)
        got += x.take()
    return got, x


def test_pipelined_keep_alive_pairs_every_kind_of_answer():
    got, x = run([b"".join(REQS)], [b"".join(ANSWERS)], close=False)
    assert [(s.req["method"], s.req["path"], s.answer["status"], s.answer["size"],
             s.answer["digest"]) for s in got] == EXPECTED
    assert [s.n for s in got] == list(range(6)) and {s.proto for s in got} == {"http"}
    # where each request starts in the client's stream (joined by client byte)
    assert [s.off for s in got] == [sum(map(len, REQS[:i])) for i in range(6)]
    first = got[0].answer
    assert first["fields"] == {"id": 42, "user.name": "x", "user.tags[0]": "a",
                               "user.tags[1]": "b", "items[0].id": 7, "ok": True}
    assert first["headers"] == {"content-type": "application/json"}
    assert got[2].answer["headers"] == {"location": "/items/9"}
    assert "fields" not in got[3].answer  # text/html
    assert got[0].req["size"] == len(REQS[0]) and got[0].req["digest"] == digest(REQS[0])
    assert got[3].req["size"] == len(REQS[3])
    assert x.errors == 0
    x.close(5.0)
    assert x.take() == []  # nothing was left pending


def test_split_at_every_byte_gives_the_same_summaries():
    reqs, ans = b"".join(REQS), b"".join(ANSWERS)
    want = untimed(run([reqs], [ans])[0])
    assert len(want) == 6
    for i in range(len(reqs) + 1):
        assert untimed(run([reqs[:i], reqs[i:]], [ans])[0]) == want, i
    for i in range(len(ans) + 1):
        assert untimed(run([reqs], [ans[:i], ans[i:]])[0]) == want, i
    one = [bytes([b]) for b in ans]
    assert untimed(run([bytes([b]) for b in reqs], one)[0]) == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 2000), max_size=12), st.lists(st.integers(0, 2000), max_size=12),
       st.booleans())
def test_any_split_any_interleaving_gives_the_same_summaries(rcuts, acuts, interleave):
    def pieces(data, cuts):
        cuts = sorted({c % (len(data) + 1) for c in cuts})
        edges = [0] + cuts + [len(data)]
        return [data[a:b] for a, b in zip(edges, edges[1:])]

    want = untimed(run([b"".join(REQS)], [b"".join(ANSWERS)])[0])
    if not interleave:
        got = run(pieces(b"".join(REQS), rcuts), pieces(b"".join(ANSWERS), acuts))[0]
    else:  # request k is all sent before answer k starts, answers interleave with later requests
        x = Exchange(80)
        got = []
        for i, (rq, an) in enumerate(zip(REQS, ANSWERS)):
            for c in pieces(rq, rcuts[i:]):
                x.request_data(c, 1.0)
            for c in pieces(an, acuts[i:]):
                x.answer_data(c, 2.0)
            got += x.take()
        x.close(3.0)
        got += x.take()
    assert untimed(got) == want


def test_latency_is_measured_from_the_requests_last_byte():
    x = Exchange(80)
    x.request_data(b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 10.0)
    x.request_data(b"cd", 10.5)  # the request ends here
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc", 10.52)
    assert x.take() == []
    x.answer_data(b"def", 10.6)
    (s,) = x.take()
    assert s.t == 10.0
    assert s.answer["first"] == 20.0 and s.answer["last"] == 100.0


def test_interim_answer_does_not_count_as_first_byte():
    x = Exchange(80)
    x.request_data(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", 0.001)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0.005)
    (s,) = x.take()
    assert s.answer["status"] == 200 and s.answer["first"] == 5.0


def test_close_delimited_body_ends_with_the_connection():
    x = Exchange(80)
    x.request_data(b"GET /old HTTP/1.0\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":", 0.01)
    x.answer_data(b" [1]}", 0.02)
    assert x.take() == []
    x.close(0.5)
    (s,) = x.take()
    assert s.answer["size"] == 10 and s.answer["fields"] == {"a[0]": 1}
    assert "error" not in s.answer and s.answer["last"] == 20.0


def test_cut_answers_and_missing_answers_carry_the_close_reason():
    x = Exchange(80)
    x.request_data(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0.1)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0.2)
    x.close(1.0, "reset")
    a, b, c = x.take()
    assert "error" not in a.answer
    assert b.answer["error"] == "reset" and b.answer["size"] == 3 and b.answer["status"] == 200
    assert c.answer == {"error": "reset"} and c.req["path"] == "/3"


def test_garbage_answer_is_counted_not_raised():
    x = Exchange(80)
    x.request_data(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", 0.1)
    x.answer_data(b"\x00\xffnot http at all" * 10, 0.2)
    x.close(0.3)
    a, b = x.take()
    assert a.answer["status"] == 200
    assert b.answer["error"] == "parse: bad status line" and b.answer["size"] == 170
    assert x.errors == 1


def test_bad_chunk_size_is_a_parse_error():
    x = Exchange(80)
    x.request_data(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0.1)
    x.close(0.3)
    (s,) = x.take()
    assert s.answer["error"] == "parse: bad chunk size" and s.answer["status"] == 200
    assert x.errors == 1


def test_garbage_request_still_gets_its_answer_read():
    x = Exchange(80)
    x.request_data(b"GET /ok HTTP/1.1\r\n\r\nGET /bad HTTP/1.1\r\nno colon here\r\n\r\nmore", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                  b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad", 0.1)
    a, b = x.take()
    assert a.answer["status"] == 200 and "error" not in a.answer
    assert b.answer["status"] == 400 and b.answer["error"] == "parse: request: bad header line"
    assert x.errors == 1


def test_answer_without_request_is_an_orphan_record():
    x = Exchange(80)
    x.request_data(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0.1)
    x.answer_data(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n", 9.0)
    a, b = x.take()
    assert b.answer["status"] == 408 and b.answer["error"] == "parse: answer without request"


def test_upgrade_makes_a_tunnel_that_is_not_read():
    x = Exchange(80)
    x.request_data(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello", 0.1)
    x.request_data(b"\x81\x85garbage", 0.2)
    x.close(1.0)
    (s,) = x.take()
    assert s.answer["status"] == 101 and x.errors == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.booleans(), st.integers(0, 300))
def test_random_bytes_never_raise(req, ans, http_prefix, cut):
    x = Exchange(80, json_limit=64)
    if http_prefix:
        req = b"GET / HTTP/1.1\r\n" + req
        ans = b"HTTP/1.1 200 OK\r\n" + ans
    x.request_data(req[:cut], 0.0)
    x.answer_data(ans[:cut], 0.1)
    x.request_data(req[cut:], 0.2)
    x.answer_data(ans[cut:], 0.3)
    x.close(0.4)
    for s in x.take():
        json.dumps(s.to_json())  # every summary is a JSON record


def test_tcp_mode_pairs_bursts():
    x = Exchange(6379)
    x.request_data(b"*1\r\n$4\r\nPING\r\n", 0.0)
    x.answer_data(b"+PO", 0.002)
    x.answer_data(b"NG\r\n", 0.003)
    assert x.take() == []
    x.request_data(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 1.0)
    (a,) = x.take()
    assert a.proto == "tcp" and x.proto == "tcp"
    assert a.req == {"size": 14, "digest": digest(b"*1\r\n$4\r\nPING\r\n")}
    assert a.answer == {"size": 7, "digest": digest(b"+PONG\r\n"), "first": 2.0, "last": 3.0}
    x.close(2.0, "timeout")
    (b,) = x.take()
    assert b.answer == {"error": "timeout"}


def test_tcp_mode_server_greeting_is_an_answer_to_an_empty_request():
    x = Exchange(25)
    x.answer_data(b"220 mx ESMTP\r\n", 0.0)
    x.request_data(b"EHLO a\r\n", 0.1)
    x.answer_data(b"250 mx\r\n", 0.15)
    x.close(0.2)
    a, b = x.take()
    assert a.req["size"] == 0 and a.answer["size"] == 14
    assert b.req["size"] == 8 and b.answer["first"] == 50.0


def test_http_detection_waits_for_the_request_line_then_replays_it():
    x = Exchange(80)
    for b in b"GET /slow HTTP/1.1\r\n\r\n":
        x.request_data(bytes([b]), 0.0)
    assert x.proto == "http"
    x2 = Exchange(80)
    x2.request_data(b"\x16\x03\x01", 0.0)  # TLS: not a token character
    assert x2.proto == "tcp"


def test_json_fields_are_limited_and_bodies_never_kept():
    big = json.dumps({"rows": list(range(600))}).encode()
    x = Exchange(80)
    x.request_data(b"GET / HTTP/1.1\r\n\r\n" * 3, 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % len(big) + big, 0.1)
    (s,) = x.take()
    assert len(s.answer["fields"]) == 512 and s.answer["fields_truncated"] is True
    assert s.answer["fields"]["rows[511]"] == 511
    # over the JSON limit: size and digest, no fields, and no body held while it streams
    x2 = Exchange(80, json_limit=1000)
    x2.request_data(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    x2.answer_data(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % len(big), 0.1)
    for i in range(0, len(big), 500):
        x2.answer_data(big[i:i + 500], 0.2)
        held = x2._an.answer.jbuf if x2._an else None
        assert held is None or len(held) <= 1000
        assert len(x2._an_rest) == 0
    (s2,) = x2.take()
    assert "fields" not in s2.answer and s2.answer["digest"] == digest(big)


def test_large_binary_body_streams_without_being_kept():
    chunk = bytes(range(256)) * 256  # 64 KiB
    x = Exchange(80)
    x.request_data(b"GET /big HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n", 0.1)
    h = hashlib.blake2b(digest_size=16)
    for _ in range(200):  # 12.5 MiB
        x.answer_data(b"%x\r\n" % len(chunk) + chunk + b"\r\n", 0.2)
        h.update(chunk)
        assert x._an.answer.jbuf is None and len(x._an_rest) == 0
    x.answer_data(b"0\r\n\r\n", 0.3)
    (s,) = x.take()
    assert s.answer["size"] == 200 * len(chunk) and s.answer["digest"] == h.hexdigest()


def test_gzip_json_is_parsed_and_digested_as_sent():
    body = gzip.compress(b'{"a": 1}')
    x = Exchange(80)
    x.request_data(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body, 0.1)
    (s,) = x.take()
    assert s.answer["fields"] == {"a": 1} and s.answer["digest"] == digest(body)
    assert s.answer["headers"]["content-encoding"] == "gzip"


def test_untyped_body_is_parsed_only_when_it_looks_like_json():
    x = Exchange(80)
    x.request_data(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n [1, 2]"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n42", 0.1)
    a, b = x.take()
    assert a.answer["fields"] == {"[0]": 1, "[1]": 2} and "fields" not in b.answer


_LINES = [b"Content-Type: application/json", b"content-length: 12", b"CONTENT-LENGTH:7",
          b"Transfer-Encoding: gzip, chunked", b"Location:  /x/1  ", b"X-Other: a:b",
          b"Host: h", b"Bad Line", b" folded", b"\tfolded", b"Content-Encoding:", b"A : b",
          b"content-type: text/plain; charset=utf-8"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_LINES), max_size=8), st.booleans())
def test_head_fast_path_agrees_with_the_full_parse(lines, crlf):
    """parse_head's regex path finds the same wanted fields as the line-by-line
    parse, and rejects the same heads."""
    from pycopy_engine.core.http1 import Bad, _parse_head_slow, header_pattern, parse_head

    eol = b"\r\n" if crlf else b"\n"
    head = eol.join([b"HTTP/1.1 200 OK"] + lines) + eol + eol
    wanted = ("content-type", "content-encoding", "location")
    try:
        slow = _parse_head_slow(head)
    except Bad as e:
        slow_err = str(e)
    else:
        slow_err = None
    try:
        fast = parse_head(head, header_pattern(wanted))
    except Bad as e:
        assert slow_err == str(e)
        return
    assert slow_err is None
    keep = set(wanted) | {"content-length", "transfer-encoding"}
    assert fast[0] == slow[0]
    assert {k: v for k, v in fast[1].items() if k in keep} == {
        k: v for k, v in slow[1].items() if k in keep}


@st.composite
def _exchanges(draw):
    """Random valid HTTP/1.1 request/answer pairs and what their summaries must say."""
    n = draw(st.integers(1, 5))
    reqs, answers, want = [], [], []
    for i in range(n):
        method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT"]))
        path = "/p%d/%d?q=%d" % (i, draw(st.integers(0, 999)), i)
        body = draw(st.binary(max_size=40)) if method in ("POST", "PUT") else b""
        head = "%s %s HTTP/1.1\r\nHost: h\r\n" % (method, path)
        if body and draw(st.booleans()):
            mid = draw(st.integers(0, len(body)))
            parts = [p for p in (body[:mid], body[mid:]) if p]
            raw = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"".join(
                b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        else:
            raw = (head + "Content-Length: %d\r\n\r\n" % len(body)).encode() + body
        reqs.append(raw)
        status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
        if draw(st.booleans()):
            doc = {"i": i, "v": draw(st.integers()), "l": [draw(st.text(max_size=5))]}
            payload, ctype = json.dumps(doc).encode(), b"application/json"
            fields = {"i": i, "v": doc["v"], "l[0]": doc["l"][0]}
        else:
            payload, ctype, fields = draw(st.binary(max_size=60)), b"application/octet-stream", None
        no_body = method == "HEAD" or status in (204, 304)
        last = i == n - 1
        framing = draw(st.sampled_from(["length", "chunked"] + (["close"] if last else [])))
        ans = b"HTTP/1.1 100 Continue\r\n\r\n" * draw(st.integers(0, 2))
        ans += b"HTTP/1.1 %d X\r\nContent-Type: %s\r\n" % (status, ctype)
        if no_body:
            ans += b"Content-Length: %d\r\n\r\n" % len(payload)  # HEAD/204/304: no body follows
        elif framing == "length":
            ans += b"Content-Length: %d\r\n\r\n" % len(payload) + payload
        elif framing == "chunked":
            step = draw(st.integers(1, 16))
            ans += b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
                b"%x\r\n%s\r\n" % (len(payload[j:j + step]), payload[j:j + step])
                for j in range(0, len(payload), step)) + b"0\r\n\r\n"
        else:
            ans += b"\r\n" + payload
        answers.append(ans)
        got_body = b"" if no_body else payload
        want.append({"method": method, "path": path, "req_size": len(raw), "status": status,
                     "size": len(got_body), "digest": digest(got_body),
                     "fields": fields if (fields is not None and not no_body) else None})
    return reqs, answers, want


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_exchanges(), st.lists(st.integers(0, 10_000), max_size=8),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_random_valid_exchanges_any_split(ex, rcuts, acuts):
    reqs, answers, want = ex

    def pieces(data, cuts):
        cuts = sorted({c % (len(data) + 1) for c in cuts})
        edges = [0] + cuts + [len(data)]
        return [data[a:b] for a, b in zip(edges, edges[1:])]

    got, x = run(pieces(b"".join(reqs), rcuts), pieces(b"".join(answers), acuts))
    assert x.errors == 0
    assert [{"method": s.req["method"], "path": s.req["path"], "req_size": s.req["size"],
             "status": s.answer["status"], "size": s.answer["size"],
             "digest": s.answer["digest"], "fields": s.answer.get("fields")} for s in got] == want
    assert all("error" not in s.answer for s in got)


def test_non_ascii_digits_in_content_length_are_a_parse_error():
    x = Exchange(80)
    x.request_data(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nab", 0.1)  # latin-1 "²"
    x.close(0.2)
    (s,) = x.take()
    assert s.answer["error"] == "parse: bad content-length" and x.errors == 1


def test_requests_beyond_the_pending_limit_stop_the_reading():
    from pycopy_engine.core.answers import MAX_PENDING

    one = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    x = Exchange(80)
    x.request_data(one * (MAX_PENDING + 2), 0.0)  # whole bodies in the same segment
    x.answer_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * (MAX_PENDING + 2), 0.1)
    x.close(0.2)
    got = x.take()
    # the one past the limit, then no more requests are read: the last answer is an orphan
    assert len(got) == MAX_PENDING + 2
    assert got[-1].answer["error"] == "parse: answer without request"
    assert {s.req["size"] for s in got[:MAX_PENDING]} == {len(one)}
    assert all("error" not in s.answer for s in got[:MAX_PENDING])
    last = got[MAX_PENDING]
    assert last.req["size"] == len(one) - 3  # its head only: its body was never read
    assert last.answer["error"] == "parse: too many requests waiting for answers"
