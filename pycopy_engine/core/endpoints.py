"""Endpoint names of ``--compare`` records: method and path pattern.

Shared by the engine (the live difference counters, core/compare_count.py)
and the report (pycopy_engine/compare/), which imports it from here: the
engine never imports the report package.
"""

from __future__ import annotations

import re
from typing import Any, Dict

# a slash and a whole path segment (up to the next slash or the end) that is a
# number, a hex id of 8 or more digits or a UUID: one pass of the C regex
# engine over the path (the next slash is not consumed: "/1/2" is two matches)
_ID_SEGMENT = re.compile(r"/(?:[+-]?[0-9]+(?:\.[0-9]+)?|[0-9A-Fa-f]{8,}"
                         r"|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}"
                         r"-[0-9A-Fa-f]{12})(?=/|\Z)")
ID = "{id}"


def normalise_path(target: str) -> str:
    """The path pattern of a request target: no query or fragment; segments
    that are numbers, hex ids (8+ hex digits) or UUIDs become ``{id}``."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # absolute form (a request to a proxy): keep the path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if not path.startswith("/"):
        return path or "/"  # "*" (OPTIONS *) or an authority (CONNECT)
    return _ID_SEGMENT.sub("/" + ID, path)


def endpoint(rec: Dict[str, Any]) -> str:
    """``METHOD /path/{id}`` for HTTP, ``tcp`` for any other protocol."""
    req = rec.get("req") or {}
    if rec.get("proto") != "http" or not req.get("method"):
        return "tcp" if rec.get("proto") == "tcp" else "(unparsed)"
    return "%s %s" % (req["method"], normalise_path(str(req.get("path", "/"))))
