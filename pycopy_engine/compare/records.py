"""Reading ``tcpcopy --compare`` records (COMPARE.md §2); endpoint names come
from core/endpoints.py (shared with the engine's live counters)."""

from __future__ import annotations

import glob
import gzip
import ipaddress
import json
import os
from typing import IO, Any, Iterator, List, Tuple


class InputError(Exception):
    """Bad input directory or option; the message names it (exit status 2)."""


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
