"""A strict parser for the Prometheus text exposition format 0.0.4 (tests only)."""

from __future__ import annotations

import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
_LABEL_PAIR = re.compile(rf'({LABEL})="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ParseError(ValueError):
    pass


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            nxt = s[i + 1]
            out.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _value(text: str, lineno: int) -> float:
    if text in ("NaN", "+Inf", "-Inf"):
        return {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}[text]
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
        raise ParseError(f"line {lineno}: bad value {text!r}")
    return float(text)


def parse(text: str) -> dict[str, dict]:
    """Return {family: {"type", "help", "samples": {(name, labels): value}}}.

    Raises ParseError on anything the format does not allow: a missing final
    newline, a TYPE after samples, a family split in two, a duplicate series,
    bad names, bad escapes, bad values, counters without ``_total``.
    """
    if text and not text.endswith("\n"):
        raise ParseError("no final newline")
    families: dict[str, dict] = {}
    current: str | None = None
    closed: set[str] = set()
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if not line:
            raise ParseError(f"line {lineno}: empty line")
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.fullmatch(NAME, name):
                    raise ParseError(f"line {lineno}: bad metric name {name!r}")
                if name in closed:
                    raise ParseError(f"line {lineno}: family {name} split")
                if current is not None and current != name:
                    closed.add(current)
                current = name
                fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
                if parts[1] == "TYPE":
                    kind = parts[3] if len(parts) == 4 else ""
                    if kind not in TYPES:
                        raise ParseError(f"line {lineno}: bad type {kind!r}")
                    if fam["type"] is not None or fam["samples"]:
                        raise ParseError(f"line {lineno}: TYPE repeated or after samples")
                    fam["type"] = kind
                else:
                    if fam["help"] is not None:
                        raise ParseError(f"line {lineno}: HELP repeated")
                    raw = parts[3] if len(parts) == 4 else ""
                    if not re.fullmatch(r"(?:[^\\]|\\[\\n])*", raw):
                        raise ParseError(f"line {lineno}: bad escape in HELP")
                    fam["help"] = re.sub(
                        r"\\([\\n])", lambda m: "\n" if m.group(1) == "n" else "\\", raw
                    )
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ParseError(f"line {lineno}: not a sample: {line!r}")
        name, labeltext, value = m.group(1), m.group(2), m.group(3)
        labels: list[tuple[str, str]] = []
        if labeltext:
            pos = 0
            while pos < len(labeltext):
                lm = _LABEL_PAIR.match(labeltext, pos)
                if not lm:
                    raise ParseError(f"line {lineno}: bad labels {labeltext!r}")
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
            if len({k for k, _ in labels}) != len(labels):
                raise ParseError(f"line {lineno}: repeated label")
        if name in closed:
            raise ParseError(f"line {lineno}: family {name} split")
        if current is not None and current != name:
            closed.add(current)
        current = name
        fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
        if fam["type"] == "counter" and not name.endswith("_total"):
            raise ParseError(f"line {lineno}: counter {name} without _total")
        key = (name, tuple(sorted(labels)))
        if key in fam["samples"]:
            raise ParseError(f"line {lineno}: duplicate series {key}")
        fam["samples"][key] = _value(value, lineno)
    return families
