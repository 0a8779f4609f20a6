"""HTTP/1.x pieces for the answer summariser (issue 9, sans-IO).

Heads are parsed whole (they are bounded by ``HEAD_LIMIT``); bodies stream
through :class:`Body`, which hands decoded slices to a sink and never keeps
them. JSON bodies become flat ``{path: scalar}`` maps (:func:`flatten`).
"""

from __future__ import annotations

import json
import re
from itertools import islice
from typing import Any, Callable, Dict, List, Optional, Tuple

HEAD_LIMIT = 64 * 1024  # bytes of a request or answer head before it is garbage
LINE_LIMIT = 4096  # a chunk-size or trailer line
MAX_FIELDS = 512

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") +([^ \r\n]+) +HTTP/1\.([0-9])\r?$")
STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) +([0-9]{3})(?:[ \t][^\r\n]*)?\r?$")
# what the first bytes of a connection must look like for HTTP mode
REQUEST_START = re.compile(rb"(" + _TOKEN + rb") +([^ \r\n]+) +HTTP/1\.[0-9]\r?\n")
_TOKEN_PREFIX = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class Bad(Exception):
    """Unparseable HTTP; the message is short and goes into ``"error": "parse: …"``."""


def head_end(buf: bytes, pos: int) -> int:
    """Index just past the blank line ending the head that starts at ``pos``, or -1."""
    i = buf.find(b"\r\n\r\n", pos)
    # a bare "\n\n" ending the head earlier (it cannot lie inside "\r\n\r\n")
    j = buf.find(b"\n\n", pos, len(buf) if i < 0 else i + 3)
    if j < 0:
        return i if i < 0 else i + 4
    return j + 2


def looks_like_request(first: bytes) -> Optional[bool]:
    """True/False once ``first`` (a connection's first client bytes) shows
    whether it starts with an HTTP/1.x request line; None if it is too short
    to tell."""
    if REQUEST_START.match(first):
        return True
    if b"\n" in first:
        return False
    m = _TOKEN_PREFIX.match(first)
    assert m is not None
    if m.end() < len(first) and first[m.end():m.end() + 1] != b" ":
        return False  # a byte that is neither a token character nor the space after one
    return None


_HEADER_LINES = re.compile(rb"(?:" + _TOKEN + rb":[^\r\n]*\r?\n)*\r?\n")
# always read: they frame the body or say whether it is JSON
READ_ALWAYS = ("content-length", "transfer-encoding", "content-type", "content-encoding")


def header_pattern(names: Tuple[str, ...]) -> "re.Pattern[bytes]":
    """A pattern finding the lines of the header fields ``names`` (and of
    ``READ_ALWAYS``) in a head: the fast path of :func:`parse_head`."""
    alt = b"|".join(re.escape(n.encode("latin-1")) for n in sorted(set(names) | set(READ_ALWAYS)))
    return re.compile(rb"\n(" + alt + rb"):[ \t]*([^\r\n]*)", re.IGNORECASE)


# a whole head in the usual shape: CRLF or LF line ends, no folded lines
_REQUEST_HEAD = re.compile(rb"(" + _TOKEN + rb") +([^ \r\n]+) +HTTP/1\.[0-9]\r?\n"
                           + _HEADER_LINES.pattern)
_STATUS_HEAD = re.compile(rb"HTTP/1\.[0-9] +([0-9]{3})(?:[ \t][^\r\n]*)?\r?\n"
                          + _HEADER_LINES.pattern)


def _found(pairs: List[Tuple[bytes, bytes]]) -> Dict[str, List[str]]:
    fields: Dict[str, List[str]] = {}
    for name, value in pairs:
        key = name.decode("latin-1").lower()
        if key in fields:
            fields[key].append(value.decode("latin-1").strip())
        else:
            fields[key] = [value.decode("latin-1").strip()]
    return fields


def request_head(buf: bytes, pos: int, end: int, wanted: "re.Pattern[bytes]"
                 ) -> Tuple[str, str, Dict[str, List[str]]]:
    """Method, target and (at least the ``wanted``) header fields of the
    request head ``buf[pos:end]``; :class:`Bad` if it is malformed."""
    m = _REQUEST_HEAD.fullmatch(buf, pos, end)
    if m:  # one regex checked it all
        pairs = wanted.findall(buf, pos, end)
        fields = _found(pairs) if pairs else {}
    else:
        first, fields = parse_head(buf, wanted, pos, end)
        m = REQUEST_LINE.match(first)
        if not m:
            raise Bad("bad request line")
    return m.group(1).decode("latin-1"), m.group(2).decode("latin-1"), fields


def status_head(buf: bytes, pos: int, end: int, wanted: "re.Pattern[bytes]"
                ) -> Tuple[int, Dict[str, List[str]]]:
    """Status and (at least the ``wanted``) header fields of the answer head
    ``buf[pos:end]``; :class:`Bad` if it is malformed."""
    m = _STATUS_HEAD.fullmatch(buf, pos, end)
    if m:
        return int(m.group(1)), _found(wanted.findall(buf, pos, end))
    first, fields = parse_head(buf, wanted, pos, end)
    m = STATUS_LINE.match(first)
    if not m:
        raise Bad("bad status line")
    return int(m.group(2)), fields


def parse_head(head: bytes, wanted: "Optional[re.Pattern[bytes]]" = None, pos: int = 0,
               end: int = -1) -> Tuple[bytes, Dict[str, List[str]]]:
    """Split the head ``head[pos:end]`` (``end`` -1: to the end) into its first
    line and its header fields (lower-case names): with ``wanted``, at least
    the fields it finds (only those, unless the head has folded lines), all
    otherwise. Malformed header lines raise :class:`Bad` either way."""
    if end < 0:
        end = len(head)
    nl = head.find(b"\n", pos, end)
    if wanted is not None and _HEADER_LINES.fullmatch(head, nl + 1, end):
        first = head[pos:nl - 1] if nl > pos and head[nl - 1] == 13 else head[pos:nl]  # 13: CR
        return first, _found(wanted.findall(head, nl, end))
    return _parse_head_slow(head[pos:end])


def _parse_head_slow(head: bytes) -> Tuple[bytes, Dict[str, List[str]]]:
    lines = head.decode("latin-1").split("\n")
    first = (lines[0][:-1] if lines[0].endswith("\r") else lines[0]).encode("latin-1")
    fields: Dict[str, List[str]] = {}
    last: Optional[List[str]] = None
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            continue
        if line[0] in " \t":  # obsolete line folding: continues the previous value
            if last is None:
                raise Bad("folded first header line")
            last[-1] = last[-1] + " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise Bad("bad header line")
        last = fields.setdefault(name.lower(), [])
        last.append(value.strip())
    return first, fields


def framing(fields: Dict[str, List[str]], request: bool) -> Tuple[str, int]:
    """("none"|"length"|"chunked"|"close", length) of a message's body."""
    cl = fields.get("content-length")
    if cl is not None and len(cl) == 1 and "transfer-encoding" not in fields:  # the usual case
        value = cl[0]
        if value.isdigit() and value.isascii() and len(value) <= 18:
            length = int(value)
            return ("length", length) if length else ("none", 0)
    te = fields.get("transfer-encoding")
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
        if codings and codings[-1] == "chunked":
            return "chunked", 0
        if request:
            raise Bad("request body without length")
        return "close", 0
    if cl:
        values = {c.strip() for v in cl for c in v.split(",")}
        if len(values) != 1:
            raise Bad("conflicting content-length")
        value = values.pop()
        if not (value.isdigit() and value.isascii()) or len(value) > 18:
            raise Bad("bad content-length")
        return ("length", int(value)) if int(value) else ("none", 0)
    return ("none", 0) if request else ("close", 0)


Sink = Callable[[memoryview], None]
_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class Body:
    """Streams one body: ``feed`` consumes what it can of ``buf[pos:]`` and
    returns the new position (unchanged when it needs more bytes to go on)."""

    __slots__ = ("kind", "left", "state", "done")

    def __init__(self, kind: str, length: int = 0) -> None:
        self.kind = kind  # "length", "chunked", "close"
        self.left = length
        self.state = _SIZE
        self.done = kind == "none"

    def feed(self, buf: bytes, pos: int, sink: Optional[Sink]) -> int:
        end = len(buf)
        if self.kind == "close":
            if sink is not None:
                sink(memoryview(buf)[pos:])
            return end
        if self.kind == "length":
            take = min(self.left, end - pos)
            if sink is not None:
                sink(memoryview(buf)[pos:pos + take])
            self.left -= take
            self.done = not self.left
            return pos + take
        return self._chunked(buf, pos, end, sink)

    def _chunked(self, buf: bytes, pos: int, end: int, sink: Optional[Sink]) -> int:
        while pos < end and not self.done:
            if self.state == _DATA:
                take = min(self.left, end - pos)
                if sink is not None:
                    sink(memoryview(buf)[pos:pos + take])
                self.left -= take
                pos += take
                if not self.left:
                    self.state = _CRLF
                continue
            nl = buf.find(b"\n", pos, pos + LINE_LIMIT)
            if nl < 0:
                if end - pos >= LINE_LIMIT:
                    raise Bad("chunk line too long")
                return pos  # the rest of the line comes later
            line = buf[pos:nl]
            pos = nl + 1
            if self.state == _CRLF:
                if line not in (b"", b"\r"):
                    raise Bad("missing CRLF after chunk")
                self.state = _SIZE
            elif self.state == _SIZE:
                m = _HEX.match(line)
                if not m or len(m.group()) > 15:
                    raise Bad("bad chunk size")
                self.left = int(m.group(), 16)
                self.state = _DATA if self.left else _TRAILER
            elif line in (b"", b"\r"):  # _TRAILER: the blank line ends the body
                self.done = True
        return pos


_DECODER = json.JSONDecoder()


def load_json(raw: bytes) -> Any:
    """``json.loads(raw)``, with a shortcut for the usual body (an object or
    array in UTF-8, nothing around it) that skips its encoding guess and
    whitespace scans. Raises ValueError (or RecursionError) as it does."""
    if raw[:1] in (b"{", b"[") and raw[1:2] != b"\x00":  # json.loads would take it as UTF-8
        text = raw.decode("utf-8", "surrogatepass")
        doc, end = _DECODER.raw_decode(text)
        if end == len(text):
            return doc
    return json.loads(raw)


class _Full(Exception):
    pass


_INDEX = tuple("[%d]" % i for i in range(1024))  # list item suffixes, made once


def flatten(doc: Any, limit: int = MAX_FIELDS) -> Tuple[Dict[str, Any], bool]:
    """Scalar values of a JSON document by field path (``a.b``, ``items[0].id``)
    in document order; the flag says whether fields beyond ``limit`` (or
    nesting too deep to walk) were left out."""
    if type(doc) is not dict and type(doc) is not list:
        return {"": doc}, False
    out: Dict[str, Any] = {}
    cut = False
    try:
        _walk(doc, "", out, limit)
    except (_Full, RecursionError):
        cut = True
    if len(out) > limit:
        return dict(islice(out.items(), limit)), True
    return out, cut


def _walk(v: Any, path: str, out: Dict[str, Any], limit: int) -> None:
    """Adds the scalars of container ``v`` under ``path`` to ``out``. The
    limit is checked per container, not per value: ``out`` may go past it by
    one container's values, which :func:`flatten` then cuts off."""
    if len(out) > limit:
        raise _Full
    if type(v) is dict:
        prefix = path + "." if path else ""
        for k, x in v.items():
            if type(x) is dict or type(x) is list:
                _walk(x, prefix + k, out, limit)
            else:
                out[prefix + k] = x
    else:
        names = _INDEX if len(v) <= len(_INDEX) else ["[%d]" % i for i in range(len(v))]
        for name, x in zip(names, v):
            if type(x) is dict or type(x) is list:
                _walk(x, path + name, out, limit)
            else:
                out[path + name] = x
