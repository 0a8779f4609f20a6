"""The answers of one connection, summarised as they stream (issue 9, sans-IO).

An :class:`Exchange` is fed the client's bytes (``request_data``) and the
server's bytes (``answer_data``) of one TCP connection, each direction in
order, with the caller's clock, and hands out one :class:`Summary` per
request and its answer (``take``), in request order.

* **HTTP/1.x** is recognised from the connection's first request line.
  Requests and answers are paired in order (keep-alive, pipelining); bodies
  are framed by Content-Length, chunked coding or the end of the connection;
  1xx interim answers are skipped; HEAD, 204 and 304 answers have no body;
  after 101 (or a 2xx to CONNECT) the connection is a tunnel and no longer read.
* **Anything else** is "tcp": a request is one client burst (the bytes until
  the server starts answering), its answer the server's bytes until the
  client sends again or the connection ends.

Bodies are never kept: their size and blake2b digest (16 bytes, hex) are
computed as they pass; only a JSON body of at most ``json_limit`` bytes is
held until it ends, to be parsed into field values by path.  Garbage never
raises: the answer gets ``"error": "parse: …"`` and ``errors`` counts it.
Times: ``first``/``last`` are milliseconds from the request's last byte to
the answer's first and last byte.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple

from .http1 import (
    HEAD_LIMIT,
    Bad,
    Body,
    flatten,
    framing,
    head_end,
    header_pattern,
    load_json,
    looks_like_request,
    request_head,
    status_head,
)

DEFAULT_HEADERS = ("content-type", "content-encoding", "location")
DIGEST_SIZE = 16
DETECT_LIMIT = 8192  # client bytes looked at to recognise HTTP
MAX_PENDING = 1024  # requests waiting for their answers, then the connection is no longer read
_HEAD, _BODY, _ABSORB, _OPAQUE = range(4)
_HTTP1_PREFIX = b"HTTP/1."
_NO_HEADERS: Dict[str, str] = {}


@dataclass
class Summary:
    """One request and its answer; ``to_json`` gives the ``req`` and ``answer``
    objects of a ``--compare`` record. (Not frozen: a frozen dataclass costs a
    microsecond more to make, and one is made per request.)"""

    __slots__ = ("n", "proto", "t", "req", "answer", "off")

    n: int  # request number within the connection, 0-based
    proto: str  # "http" or "tcp"
    t: float  # the caller's clock when the request's first byte was seen
    req: Dict[str, Any]
    answer: Dict[str, Any]
    off: Optional[int]  # where the request starts in the client's byte stream

    def to_json(self) -> Dict[str, Any]:
        return {"req": self.req, "answer": self.answer}


class _Answer:
    __slots__ = ("status", "headers", "size", "hash", "limit", "jbuf", "json_ok", "encoding",
                 "fields", "truncated", "t_first", "t_last", "error", "done", "body")

    def __init__(self, t_first: Optional[float], limit: int = 0, status: Optional[int] = None,
                 headers: Dict[str, str] = _NO_HEADERS) -> None:
        self.status = status
        self.headers = headers  # (given with the status, the only time they are written out)
        self.size = 0
        self.hash = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self.limit = limit
        self.jbuf: Optional[bytearray] = None
        self.json_ok = False  # content-type says JSON
        self.encoding = ""
        self.fields: Optional[Dict[str, Any]] = None
        self.truncated = False
        self.t_first = t_first
        self.t_last = t_first
        self.error: Optional[str] = None
        self.done = False
        self.body: Optional[Body] = None

    def feed(self, mv: memoryview) -> None:
        self.size += len(mv)
        self.hash.update(mv)
        jb = self.jbuf
        if jb is not None:
            if len(jb) + len(mv) > self.limit:
                self.jbuf = None  # too big to parse: size and digest only
            else:
                jb += mv

    def parse_json(self, raw: bytes = b"") -> None:
        """Fields of the JSON body: ``raw`` when it came whole, else what ``jbuf`` holds."""
        if not raw:
            data, self.jbuf = self.jbuf, None
            if not data:
                return
            raw = bytes(data)
        if self.encoding in ("gzip", "x-gzip", "deflate"):
            try:
                d = zlib.decompressobj(47 if "gzip" in self.encoding else zlib.MAX_WBITS)
                raw = d.decompress(raw, self.limit)
                if d.unconsumed_tail:
                    return
            except zlib.error:
                return
        elif self.encoding not in ("", "identity"):
            return
        if not self.json_ok and raw.lstrip()[:1] not in (b"{", b"["):
            return
        try:
            doc = load_json(raw)
        except (ValueError, RecursionError):
            return
        self.fields, self.truncated = flatten(doc)

    def to_json(self, t_req: float, tcp: bool) -> Dict[str, Any]:
        t_first = self.t_first
        if t_first is None:  # not one byte of it
            return {"error": self.error or "closed"}
        if tcp or self.status is None:
            out: Dict[str, Any] = {"size": self.size, "digest": self.hash.hexdigest()}
        else:
            out = {"status": self.status, "headers": self.headers, "size": self.size,
                   "digest": self.hash.hexdigest()}
        if self.fields is not None:
            out["fields"] = self.fields
            if self.truncated:
                out["fields_truncated"] = True
        first = t_first - t_req
        last = (self.t_last or t_first) - t_req
        out["first"] = round(first * 1000.0, 3) if first > 0.0 else 0.0
        out["last"] = round(last * 1000.0, 3) if last > 0.0 else 0.0
        if self.error:
            out["error"] = self.error
        return out


class _Request:
    __slots__ = ("n", "method", "path", "size", "hash", "t0", "t_done", "done", "answer",
                 "error", "body", "off")

    def __init__(self, n: int, method: str, path: str, t0: float, off: int) -> None:
        self.n = n
        self.off = off  # offset of its first byte in the client's stream
        self.method = method
        self.path = path
        self.size = 0
        self.hash = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self.t0 = t0
        self.t_done: Optional[float] = None
        self.done = False
        self.answer: Optional[_Answer] = None
        self.error: Optional[str] = None
        self.body: Optional[Body] = None


class Exchange:
    """Pairs the requests of one connection with their answers, streaming."""

    def __init__(self, port: int, json_limit: int = 1 << 20,
                 headers: Tuple[str, ...] = DEFAULT_HEADERS) -> None:
        self.port = port
        self.json_limit = json_limit
        self.headers = tuple(h.lower() for h in headers)
        self._wanted = header_pattern(self.headers)
        self.proto: Optional[str] = None  # "http" or "tcp" once known
        self.errors = 0  # garbage seen: requests or answers that did not parse
        self.closed = False
        self._early: List[Tuple[bytes, float]] = []  # client bytes before the protocol is known
        self._order: Deque[_Request] = deque()  # requests not handed out yet, in order
        self._waiting: Deque[_Request] = deque()  # http: head seen, answer not complete
        self._out: List[Summary] = []
        self._n = 0
        self._rq: Optional[_Request] = None  # the request being read
        self._rq_state = _HEAD
        self._rq_rest = b""
        self._rq_t0: Optional[float] = None
        self._an: Optional[_Request] = None  # the request whose answer is being read
        self._an_state = _HEAD
        self._an_rest = b""
        self._an_t0: Optional[float] = None
        self._in = 0  # client bytes taken in so far (request offsets)
        self._buf_base = 0  # offset of the first byte of the request buffer being parsed

    # -- the interface ---------------------------------------------------

    def request_data(self, data: bytes, now: float) -> None:
        """Client -> server bytes, in order."""
        if self.closed or not data:
            return
        if self.proto is None:
            self._early.append((bytes(data), now))
            first = b"".join(d for d, _ in self._early)[:DETECT_LIMIT]
            verdict = looks_like_request(first)
            if verdict is None and len(first) < DETECT_LIMIT:
                return
            self._decide(bool(verdict))
        elif self.proto == "http":
            self._http_request(data, now)
        else:
            self._tcp_request(data, now)

    def answer_data(self, data: bytes, now: float) -> None:
        """Server -> client bytes, in order."""
        if self.closed or not data:
            return
        if self.proto is None:
            self._decide(looks_like_request(b"".join(d for d, _ in self._early)) is True)
        if self.proto == "http":
            self._http_answer(data, now)
        else:
            self._tcp_answer(data, now)

    def close(self, now: float, reason: str = "closed") -> None:
        """The connection ended; ``reason`` ("closed", "reset", "timeout") is
        the error of every answer it cut short or that never came."""
        if self.closed:
            return
        if self.proto is None and self._early:
            self._decide(looks_like_request(b"".join(d for d, _ in self._early)) is True)
        self.closed = True
        if self.proto == "tcp":
            if self._rq is not None:
                self._tcp_finish(self._rq, reason)
            return
        r = self._an
        if r is not None and r.answer is not None:
            a = r.answer
            if not (self._an_state == _ABSORB or (a.body and a.body.kind == "close")):
                a.error = a.error or reason
            self._answer_done(r)
        for r in self._order:
            r.done = True
            if r.answer is None:
                r.answer = _Answer(None)
            if not r.answer.done:
                r.answer.error = r.answer.error or reason
                r.answer.done = True
                r.answer.parse_json()
        self._waiting.clear()
        self._flush()

    def take(self) -> List[Summary]:
        """Finished request/answer pairs, in request order (each handed out once)."""
        out, self._out = self._out, []
        return out

    # -- common ----------------------------------------------------------

    def _decide(self, http: bool) -> None:
        self.proto = "http" if http else "tcp"
        early, self._early = self._early, []
        for data, t in early:
            if http:
                self._http_request(data, t)
            else:
                self._tcp_request(data, t)

    def _new_request(self, method: str, path: str, t0: float, off: Optional[int] = None) -> _Request:
        r = _Request(self._n, method, path, t0, self._in if off is None else off)
        self._n += 1
        self._order.append(r)
        return r

    def _flush(self) -> None:
        order = self._order
        while order:
            r = order[0]
            a = r.answer
            if not r.done or a is None or not a.done:
                return
            order.popleft()
            tcp = self.proto == "tcp"
            if tcp:
                req: Dict[str, Any] = {"size": r.size, "digest": r.hash.hexdigest()}
            else:
                req = {"method": r.method, "path": r.path, "size": r.size,
                       "digest": r.hash.hexdigest()}
            if r.error and not a.error:
                a.error = r.error
            t_req = r.t_done if r.t_done is not None else r.t0
            self._out.append(Summary(r.n, self.proto or "tcp", r.t0, req, a.to_json(t_req, tcp),
                                     r.off))

    # -- tcp mode --------------------------------------------------------

    def _tcp_request(self, data: bytes, now: float) -> None:
        r = self._rq
        if r is not None and r.answer is not None:  # the server had answered: that pair is over
            self._tcp_finish(r, "closed")
            r = None
        if r is None:
            r = self._rq = self._new_request("", "", now)
        self._in += len(data)
        r.size += len(data)
        r.hash.update(data)
        r.t_done = now

    def _tcp_answer(self, data: bytes, now: float) -> None:
        r = self._rq
        if r is None:  # the server speaks first (a greeting): an empty request
            r = self._rq = self._new_request("", "", now)
            r.t_done = now
        a = r.answer
        if a is None:
            a = r.answer = _Answer(now)
        a.size += len(data)
        a.hash.update(data)
        a.t_last = now

    def _tcp_finish(self, r: _Request, reason: str) -> None:
        r.done = True
        if r.answer is None:
            r.answer = _Answer(None)
            r.answer.error = reason
        r.answer.done = True
        self._rq = None
        self._flush()

    # -- http: requests --------------------------------------------------

    def _http_request(self, data: bytes, now: float) -> None:
        buf = self._rq_rest + data if self._rq_rest else data
        self._rq_rest = b""
        self._in += len(data)
        self._buf_base = self._in - len(buf)
        pos, end = 0, len(buf)
        while pos < end:
            st = self._rq_state
            if st == _OPAQUE:
                return
            r = self._rq
            if st == _ABSORB:
                assert r is not None
                r.size += end - pos
                r.hash.update(memoryview(buf)[pos:])
                return
            if st == _HEAD:
                new = self._request_head(buf, pos, now)
            else:
                assert r is not None and r.body is not None
                try:
                    new = r.body.feed(buf, pos, None)
                except Bad as e:
                    r.error = "parse: request: %s" % e
                    self.errors += 1
                    self._rq_state = _ABSORB
                    continue
                r.size += new - pos
                r.hash.update(memoryview(buf)[pos:new])
                if r.body.done:
                    self._request_done(r, now)
            if new == pos and self._rq_state == st:
                break
            pos = new
        if pos < end:
            self._rq_rest = bytes(buf[pos:])

    def _request_head(self, buf: bytes, pos: int, now: float) -> int:
        end = len(buf)
        if buf[pos] in b"\r\n":  # empty lines between requests are allowed
            while pos < end and buf[pos] in b"\r\n":
                pos += 1
            if pos == end:
                return pos
        if self._rq_t0 is None:
            self._rq_t0 = now
        e = head_end(buf, pos)
        try:
            if e < 0:
                if end - pos > HEAD_LIMIT:
                    raise Bad("request head too long")
                if looks_like_request(buf[pos:pos + 256]) is False:
                    raise Bad("bad request line")
                return pos
            method, path, fields = request_head(buf, pos, e, self._wanted)
            kind, length = framing(fields, True) if fields else ("none", 0)
        except Bad as err:
            self._request_garbage(str(err), now, self._buf_base + pos)
            return pos
        r = self._new_request(method, path, self._rq_t0, self._buf_base + pos)
        waiting = self._waiting
        waiting.append(r)
        if len(waiting) > MAX_PENDING:
            r.size = e - pos
            r.hash.update(memoryview(buf)[pos:e])
            r.error = "parse: too many requests waiting for answers"
            self.errors += 1
            self._rq_state = _OPAQUE
            return e
        if kind == "length" and e + length <= end:  # the whole body is here too
            e += length
            kind = "none"
        r.size = e - pos
        r.hash.update(buf if e - pos == end else memoryview(buf)[pos:e])
        if kind == "none":
            r.done = True
            r.t_done = now
            self._rq_t0 = None  # (its answer cannot have come yet: nothing to flush)
        else:
            r.body = Body(kind, length)
            self._rq = r
            self._rq_state = _BODY
        return e

    def _request_garbage(self, msg: str, now: float, off: int) -> None:
        """Unparseable client bytes: one request holds them all from here on;
        its answer (a 400, often) is still read."""
        r = self._new_request("", "", self._rq_t0 if self._rq_t0 is not None else now, off)
        r.error = "parse: request: %s" % msg
        r.done = True
        r.t_done = now
        self.errors += 1
        self._waiting.append(r)
        self._rq = r
        self._rq_state = _ABSORB

    def _request_done(self, r: _Request, now: float) -> None:
        r.done = True
        r.t_done = now
        self._rq = None
        self._rq_state = _HEAD
        self._rq_t0 = None
        self._flush()

    # -- http: answers ---------------------------------------------------

    def _http_answer(self, data: bytes, now: float) -> None:
        buf = self._an_rest + data if self._an_rest else data
        self._an_rest = b""
        pos, end = 0, len(buf)
        while pos < end:
            st = self._an_state
            if st == _OPAQUE:
                return
            r = self._an
            if st == _ABSORB:
                assert r is not None and r.answer is not None
                r.answer.size += end - pos
                r.answer.hash.update(memoryview(buf)[pos:])
                r.answer.t_last = now
                return
            try:
                if st == _HEAD:
                    new = self._answer_head(buf, pos, now)
                else:
                    assert r is not None and r.answer is not None and r.answer.body is not None
                    a = r.answer
                    assert a.body is not None
                    new = a.body.feed(buf, pos, a.feed)
                    if new > pos:
                        a.t_last = now
                    if a.body.done:
                        self._answer_done(r)
            except Bad as err:
                self._answer_garbage(str(err), now)
                continue
            if new == pos and self._an_state == st:
                break
            pos = new
        if pos < end:
            self._an_rest = bytes(buf[pos:])

    def _answer_head(self, buf: bytes, pos: int, now: float) -> int:
        end = len(buf)
        if self._an_t0 is None:
            self._an_t0 = now
        e = head_end(buf, pos)
        if e < 0:
            if end - pos > HEAD_LIMIT:
                raise Bad("answer head too long")
            start = buf[pos:pos + len(_HTTP1_PREFIX)]
            if not _HTTP1_PREFIX.startswith(start):
                raise Bad("bad status line")
            return pos
        status, fields = status_head(buf, pos, e, self._wanted)
        if 100 <= status < 200 and status != 101:  # interim: the real answer follows
            self._an_t0 = None
            return e
        r = self._waiting[0] if self._waiting else self._current(now)
        r.answer = a = _Answer(self._an_t0, self.json_limit, status,
                               {h: ", ".join(fields[h]) for h in self.headers if h in fields})
        a.t_last = now
        self._an_t0 = None
        self._an = r
        if status == 101 or (r.method == "CONNECT" and 200 <= status < 300):
            self._answer_done(r)
            self._an_state = self._rq_state = _OPAQUE  # a tunnel from here on
            return e
        if r.method == "HEAD" or status in (204, 304):
            kind, length = "none", 0
        else:
            kind, length = framing(fields, False)
        if kind == "none":
            self._answer_done(r)
            return e
        ctype = ", ".join(fields["content-type"]).lower() if "content-type" in fields else ""
        a.json_ok = "json" in ctype
        if kind == "length" and e + length <= end:  # the whole body is here: no streaming
            a.size = length
            a.hash.update(memoryview(buf)[e:e + length])
            if (a.json_ok or not ctype) and length <= a.limit:
                a.encoding = ", ".join(fields.get("content-encoding", ())).strip().lower()
                a.parse_json(buf[e:e + length])
            self._answer_done(r)
            return e + length
        if a.json_ok or not ctype:
            a.jbuf = bytearray()
            a.encoding = ", ".join(fields.get("content-encoding", ())).strip().lower()
        a.body = Body(kind, length)
        self._an_state = _BODY
        return e

    def _current(self, now: float) -> _Request:
        """The request the next answer belongs to (an orphan one if none waits)."""
        if self._waiting:
            return self._waiting[0]
        r = self._new_request("", "", now)
        r.error = "parse: answer without request"
        r.done = True
        r.t_done = now
        self.errors += 1
        return r

    def _answer_garbage(self, msg: str, now: float) -> None:
        """Unparseable server bytes: the current answer holds them all, to the end."""
        r = self._an if self._an is not None else self._current(now)
        if r.answer is None:
            r.answer = _Answer(self._an_t0 if self._an_t0 is not None else now)
        r.answer.jbuf = None
        r.answer.error = "parse: %s" % msg
        self.errors += 1
        self._an = r
        self._an_state = _ABSORB

    def _answer_done(self, r: _Request) -> None:
        a = r.answer
        assert a is not None
        a.done = True
        if a.jbuf is not None:
            a.parse_json()
        if self._waiting and self._waiting[0] is r:
            self._waiting.popleft()
        self._an = None
        self._an_state = _HEAD
        self._flush()
