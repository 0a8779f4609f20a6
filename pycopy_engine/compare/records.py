"""Reading ``tcpcopy --compare`` records (COMPARE.md §2) and naming endpoints."""

from __future__ import annotations

import glob
import gzip
import ipaddress
import json
import os
import re
from typing import IO, Any, Dict, Iterator, List, Tuple

_NUMBER = re.compile(r"^[+-]?[0-9]+(?:\.[0-9]+)?$")
_HEX_ID = re.compile(r"^[0-9A-Fa-f]{8,}$")
_UUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
ID = "{id}"


class InputError(Exception):
    """Bad input directory or option; the message names it (exit status 2)."""


def normalise_path(target: str) -> str:
    """The path pattern of a request target: no query or fragment; segments
    that are numbers, hex ids (8+ hex digits) or UUIDs become ``{id}``."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # absolute form (a request to a proxy): keep the path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if not path.startswith("/"):
        return path or "/"  # "*" (OPTIONS *) or an authority (CONNECT)
    segs = path.split("/")
    return "/".join(ID if (_NUMBER.match(s) or _HEX_ID.match(s) or _UUID.match(s)) else s
                    for s in segs)


def endpoint(rec: Dict[str, Any]) -> str:
    """``METHOD /path/{id}`` for HTTP, ``tcp`` for any other protocol."""
    req = rec.get("req") or {}
    if rec.get("proto") != "http" or not req.get("method"):
        return "tcp" if rec.get("proto") == "tcp" else "(unparsed)"
    return "%s %s" % (req["method"], normalise_path(str(req.get("path", "/"))))


def parse_target(text: str) -> str:
    """Check an ``IP:PORT`` (``[v6]:PORT``) option value; return it as records spell it."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("--baseline %r is not IP:PORT (e.g. 10.0.0.12:8080)" % text)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        raise InputError("--baseline %r: %r is not an IP address" % (text, host)) from None
    return text


def record_files(directory: str) -> List[str]:
    """The record files of DIR, oldest first (rotated names sort by time)."""
    if not os.path.isdir(directory):
        raise InputError("%s: no such directory (give the DIR of tcpcopy --compare DIR)"
                         % directory)
    files = sorted(glob.glob(os.path.join(directory, "compare-*.jsonl"))
                   + glob.glob(os.path.join(directory, "compare-*.jsonl.gz")))
    if not files:
        raise InputError("%s: no compare-*.jsonl files in it (written by tcpcopy --compare DIR)"
                         % directory)
    return files


def read_records(files: List[str]) -> Iterator[Tuple[str, Any]]:
    """("ok", record) for each good line, ("bad", reason) for the others."""
    for name in files:
        fh: IO[str]
        if name.endswith(".gz"):
            fh = gzip.open(name, "rt", encoding="utf-8", errors="replace")
        else:
            fh = open(name, encoding="utf-8", errors="replace")
        with fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    yield "bad", "not JSON"
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get("answers"), dict):
                    yield "bad", "no answers object"
                    continue
                yield "ok", rec
