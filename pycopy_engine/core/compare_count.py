"""Live counters of how each target's answers differ from online's, per
endpoint and kind, while ``tcpcopy --compare`` runs (sans-IO).

Each finished record (COMPARE.md §2) with a usable online answer adds, for
every target answer in it:

- ``compare_answers{endpoint,target}``: one (the denominator);
- ``compare_differences{endpoint,target,kind}``: one per kind that differs,
  with the report's rules (pycopy_engine/compare/analysis.py), each kind at
  most once per answer:

  ``status``  the status differs (a missing or failed answer is a status of
              its own); when it does, nothing else but latency is compared;
  ``field``   JSON answers: at least one field value by path, or one recorded
              header, differs;
  ``size``    other answers (or a JSON body with more than 512 fields): the
              body size differs;
  ``body``    same, sizes equal, the digest differs;
  ``latency`` the time to the last byte differs from online's by more than
              max(20 % of online's, 5 ms), in either direction.

These are raw differences against online: nothing is cancelled as noise
(a timestamp in every answer makes every JSON answer differ).  A baseline
target (online's version) gets the same counters: its own are the noise
level; ``pycopy-compare --baseline`` does the cancellation afterwards.

Cardinality is bounded: the first ``max_endpoints`` endpoints seen are named,
the others counted under ``endpoint="other"``; ``compare_endpoints_overflowed``
counts the distinct endpoints that went there (exactly up to
``MAX_OVERFLOW_NAMES`` names, then it stops growing: a lower bound).

Cost: the record is already a dict (nothing parsed again); one path
normalisation per record, dictionary compares per target answer.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Set, Tuple

from .endpoints import endpoint, normalise_path
from .stats import Stats, labelled

KINDS = ("status", "size", "body", "field", "latency")
OTHER = "other"
DEFAULT_MAX_ENDPOINTS = 200
MAX_OVERFLOW_NAMES = 65536  # hashes of overflowed endpoint names remembered
LATENCY_REL = 0.20  # of online's time
LATENCY_MS = 5.0
ANSWERS = "compare_answers"
DIFFERENCES = "compare_differences"
OVERFLOWED = "compare_endpoints_overflowed"

_CTRL = re.compile(r"[\x00-\x1f\x7f]")
_NO_ANSWER = ("no answer",)
_ANSWER = ("answer",)  # tcp mode: no status


def _pct(m: "re.Match[str]") -> str:
    return "%%%02X" % ord(m.group())


def _status(a: Any) -> Any:
    """What the status comparison sees (analysis.status_of, without the strings)."""
    if a.__class__ is not dict:
        return _NO_ANSWER
    if "status" in a:
        return a["status"]
    if "error" in a and "size" not in a:
        return ("error", a["error"])
    return _ANSWER


def _time(a: Dict[str, Any]) -> Any:
    t = a.get("last")
    return a.get("first") if t is None else t


def fields_differ(fo: Dict[str, Any], fa: Dict[str, Any]) -> bool:
    """True when a field is missing on one side or has another value; a JSON
    ``true`` is not ``1`` (Python's ``==`` says it is)."""
    if fo != fa:
        return True
    # equal as Python values: the same keys; a bool against a number is the
    # only difference left (one pass in C when both sides list them in order)
    if list(map(type, fo.values())) == list(map(type, fa.values())):
        return False
    return any((v.__class__ is bool) != (fa[k].__class__ is bool) for k, v in fo.items())


class DiffCounter:
    """Counts one record at a time into ``stats`` (see the module's text)."""

    def __init__(self, stats: Stats, max_endpoints: int = DEFAULT_MAX_ENDPOINTS) -> None:
        self.c = stats.c
        self.max_endpoints = max_endpoints
        self.named: Set[str] = set()
        self.overflowed: Set[int] = set()
        # (endpoint, target) -> (answers key, status, size, body, field, latency keys)
        self.keys: Dict[Tuple[str, str], Tuple[str, ...]] = {}
        self.c[OVERFLOWED] += 0  # exported from the start, at 0

    def endpoint(self, rec: Dict[str, Any]) -> str:
        """The record's endpoint label: its name, or ``other`` beyond the limit."""
        req = rec.get("req")
        if rec.get("proto") == "http" and req and req.get("method"):
            name = "%s %s" % (req["method"], normalise_path(str(req.get("path", "/"))))
            if _CTRL.search(name):  # a label value stays one printable line
                name = _CTRL.sub(_pct, name)
        else:
            name = endpoint(rec)
        named = self.named
        if name in named:
            return name
        if len(named) < self.max_endpoints:
            named.add(name)
            return name
        h = hash(name)
        over = self.overflowed
        if h not in over and len(over) < MAX_OVERFLOW_NAMES:
            over.add(h)
            self.c[OVERFLOWED] += 1
        return OTHER

    def _keys(self, ep: str, target: str) -> Tuple[str, ...]:
        e, t = ("endpoint", ep), ("target", target)
        keys = (labelled(ANSWERS, e, t),) + tuple(
            labelled(DIFFERENCES, e, t, ("kind", k)) for k in KINDS)
        self.keys[(ep, target)] = keys
        return keys

    def count(self, rec: Dict[str, Any]) -> None:
        answers = rec.get("answers")
        if not answers:
            return
        on = answers.get("online")
        if on.__class__ is not dict or "error" in on or "size" not in on:
            return  # nothing to compare with (the report skips these too)
        ep = self.endpoint(rec)
        c = self.c
        allkeys = self.keys
        so = _status(on)
        t_on = _time(on)
        fo: Any = on.get("fields")
        for label, a in answers.items():
            if label == "online":
                continue
            keys = allkeys.get((ep, label)) or self._keys(ep, label)
            c[keys[0]] += 1
            ok = a.__class__ is dict and "error" not in a and "size" in a
            if ok and t_on is not None:
                t = _time(a)
                if t is not None and abs(t - t_on) > max(t_on * LATENCY_REL, LATENCY_MS):
                    c[keys[5]] += 1
            if _status(a) != so:
                c[keys[1]] += 1
                continue
            if not ok:
                continue
            fa: Any = a.get("fields")
            lifted = fo.__class__ is dict and fa.__class__ is dict
            if lifted and (fields_differ(fo, fa)
                           or (on.get("headers") or {}) != (a.get("headers") or {})):
                c[keys[4]] += 1
            if not lifted or on.get("fields_truncated") or a.get("fields_truncated"):
                if on.get("size") != a.get("size"):
                    c[keys[2]] += 1
                elif on.get("digest") != a.get("digest"):
                    c[keys[3]] += 1
