"""Differences against online, Diffy's noise model, and the latency rule.

Per endpoint, kind and field, ``raw`` counts the requests where a target's
answer differs from online's and ``noise`` those where the baseline's does
(the baseline runs online's version, so its differences are
non-determinism: timestamps, generated ids, ordering). A difference is a
regression when ``raw > noise``, the relative difference
``|raw - noise| / (raw + noise)`` and the absolute one
``|raw - noise| / requests`` pass their thresholds (percent), and
``raw - noise > z * sqrt(raw + noise)`` (a few chance differences in a
small sample are not a regression; ``z = 0`` turns this off).

What is compared, request by request: the status (a missing answer counts as
one) first — when it differs, nothing else of that answer is compared; then,
for JSON answers, every field by path and the selected headers; for other
answers the body size and, when the sizes are equal, the body digest.

Latency (time to the answer's last byte): a target regresses on an endpoint
when its p50 or p99 rose against online's by more than the baseline's own
change (in either direction) and, beyond the baseline's rise, by more than
``max(20 % of online's, 5 ms)``. p99 is judged only with at least
``min_samples_p99`` answers on each side (default 1,000: at least 10 answers
beyond it): with fewer it is about the slowest one or two answers, and one
burst of delay (a run's start, a busy moment of tcpcopy, whose loop delay
target timings include) would make a regression.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..core.endpoints import endpoint

MISSING = object()
RESERVOIR = 50_000  # latency samples kept per endpoint and answerer
EXAMPLES = 3


@dataclass(frozen=True)
class Rules:
    relative: float = 20.0  # percent
    absolute: float = 1.0  # percent of the endpoint's requests
    z: float = 2.0
    latency_rel: float = 20.0  # percent of online's percentile
    latency_ms: float = 5.0
    min_samples: int = 5
    min_samples_p99: int = 1000  # below this a p99 is the slowest few answers: one hiccup


def percentile(sorted_values: List[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _ok(a: Any) -> bool:
    return isinstance(a, dict) and "error" not in a and "size" in a


def status_of(a: Any) -> str:
    """What the status comparison sees: the code, or how the answer failed."""
    if not isinstance(a, dict):
        return "no answer"
    if "status" in a:
        return str(a["status"])
    if "error" in a and "size" not in a:
        return "no answer (%s)" % a["error"]
    return "answer"  # tcp mode: no status


def _same(x: Any, y: Any) -> bool:
    return isinstance(x, bool) == isinstance(y, bool) and x == y


def _show(v: Any) -> str:
    s = "(absent)" if v is MISSING else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def differences(o: Dict[str, Any], a: Any) -> Iterator[Tuple[str, Optional[str], Any, Any]]:
    """(kind, field, online value, target value) for each way ``a`` differs from ``o``."""
    so, sa = status_of(o), status_of(a)
    if so != sa:
        yield "status", None, so, sa
        return
    if not _ok(a):
        return
    fo, fa = o.get("fields"), a.get("fields")
    lifted = isinstance(fo, dict) and isinstance(fa, dict)
    if lifted:
        assert isinstance(fo, dict) and isinstance(fa, dict)
        for k in sorted(fo.keys() | fa.keys()):
            vo, va = fo.get(k, MISSING), fa.get(k, MISSING)
            if not _same(vo, va):
                yield "field", k, vo, va
        ho, ha = o.get("headers") or {}, a.get("headers") or {}
        for h in sorted(ho.keys() | ha.keys()):
            if ho.get(h, MISSING) != ha.get(h, MISSING):
                yield "field", "header:" + h, ho.get(h, MISSING), ha.get(h, MISSING)
    if not lifted or o.get("fields_truncated") or a.get("fields_truncated"):
        if o.get("size") != a.get("size"):
            yield "size", None, o.get("size"), a.get("size")
        elif o.get("digest") != a.get("digest"):
            yield "body", None, str(o.get("digest"))[:12], str(a.get("digest"))[:12]


class _Samples:
    __slots__ = ("values", "seen")

    def __init__(self) -> None:
        self.values: List[float] = []
        self.seen = 0

    def add(self, v: float, rng: random.Random) -> None:
        self.seen += 1
        if len(self.values) < RESERVOIR:
            self.values.append(v)
        else:  # reservoir sampling: memory stays bounded on long runs
            j = rng.randrange(self.seen)
            if j < RESERVOIR:
                self.values[j] = v


class Analysis:
    """Feed records with :meth:`add`, then :meth:`summary`."""

    def __init__(self, baseline: Optional[str] = None, rules: Rules = Rules()) -> None:
        self.baseline = baseline
        self.rules = rules
        self.records = 0
        self.skipped = 0  # no usable online answer
        self.requests: Dict[str, int] = {}
        self.targets: Dict[str, int] = {}
        # (endpoint, kind, field) -> target -> [count, examples]
        self.diffs: Dict[Tuple[str, str, Optional[str]], Dict[str, List[Any]]] = {}
        self.lat: Dict[str, Dict[str, _Samples]] = {}
        self.slowest: Dict[Tuple[str, str], List[Tuple[float, int, str]]] = {}
        self._rng = random.Random(9)

    def add(self, rec: Dict[str, Any]) -> None:
        self.records += 1
        answers = rec["answers"]
        ep = endpoint(rec)
        for t in answers:
            if t != "online":
                self.targets[t] = self.targets.get(t, 0) + 1
        on = answers.get("online")
        if not _ok(on):
            self.skipped += 1
            return
        self.requests[ep] = self.requests.get(ep, 0) + 1
        lat = self.lat.setdefault(ep, {})
        t_on = float(on.get("last", on.get("first", 0.0)) or 0.0)
        lat.setdefault("online", _Samples()).add(t_on, self._rng)
        req = rec.get("req") or {}
        what = ("%s %s" % (req.get("method"), req.get("path"))) if req.get("method") else (
            "%s bytes" % req.get("size"))
        where = "%s #%s" % (rec.get("flow", "?"), rec.get("n", "?"))
        for t, a in answers.items():
            if t == "online":
                continue
            if _ok(a):
                t_a = float(a.get("last", a.get("first", 0.0)) or 0.0)
                lat.setdefault(t, _Samples()).add(t_a, self._rng)
                top = self.slowest.setdefault((ep, t), [])
                item = (t_a - t_on, self.records, "%s [%s]: %.1f ms (online %.1f ms)"
                        % (what, where, t_a, t_on))
                if len(top) < EXAMPLES:
                    heapq.heappush(top, item)
                else:
                    heapq.heappushpop(top, item)
            for kind, field, vo, va in differences(on, a):
                slot = self.diffs.setdefault((ep, kind, field), {}).setdefault(t, [0, []])
                slot[0] += 1
                if len(slot[1]) < EXAMPLES:
                    show = str if kind == "status" else _show
                    slot[1].append("%s [%s]: online %s, target %s"
                                   % (what, where, show(vo), show(va)))

    # -- results ---------------------------------------------------------

    def _judge(self, raw: int, noise: int, total: int) -> bool:
        r = self.rules
        if raw <= noise or total <= 0:
            return False
        rel = (raw - noise) * 100.0 / (raw + noise)
        absolute = (raw - noise) * 100.0 / total
        return (rel > r.relative and absolute > r.absolute
                and raw - noise > r.z * math.sqrt(raw + noise))

    def _latency(self) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        r = self.rules
        table: Dict[str, Any] = {}
        found: List[Dict[str, Any]] = []
        for ep in sorted(self.lat):
            per = {who: sorted(s.values) for who, s in self.lat[ep].items()}
            on = per.get("online", [])
            row: Dict[str, Any] = {}
            for who in ["online"] + sorted(w for w in per if w != "online"):
                v = per[who]
                row[who] = {"n": self.lat[ep][who].seen, "p50": round(percentile(v, 50), 3),
                            "p99": round(percentile(v, 99), 3)}
            table[ep] = row
            base = per.get(self.baseline or "", [])
            use_base = len(base) >= r.min_samples
            for t in sorted(w for w in per if w not in ("online", self.baseline)):
                v = per[t]
                if len(on) < r.min_samples or len(v) < r.min_samples:
                    continue
                hit = []
                for p in (50, 99):
                    po = percentile(on, p)
                    change = percentile(v, p) - po
                    row[t]["change_p%d" % p] = round(change, 3)
                    if p == 99 and min(len(on), len(v)) < r.min_samples_p99:
                        continue
                    own = percentile(base, p) - po if use_base else 0.0
                    limit = max(po * r.latency_rel / 100.0, r.latency_ms)
                    if change > abs(own) and change - max(own, 0.0) > limit:
                        hit.append(("p%d" % p, po, po + change, po + own if use_base else None))
                if hit:
                    found.append(self._latency_regression(ep, t, hit, len(v)))
            if use_base:
                for p in (50, 99):
                    row[self.baseline or ""]["change_p%d" % p] = round(
                        percentile(base, p) - percentile(on, p), 3)
        return table, found

    def _latency_regression(self, ep: str, t: str, hit: List[Tuple[str, float, float, Any]],
                            n: int) -> Dict[str, Any]:
        lines = ["%s: online %.1f ms, target %.1f ms%s" % (
            name, po, pt, "" if pb is None else ", baseline %.1f ms" % pb)
            for name, po, pt, pb in hit]
        slow = [s for _, _, s in sorted(self.slowest.get((ep, t), []), reverse=True)]
        return {"endpoint": ep, "target": t, "kind": "latency", "field": None, "count": n,
                "examples": lines + slow, "percentiles": [h[0] for h in hit],
                "change_ms": {h[0]: round(h[2] - h[1], 3) for h in hit}}

    def summary(self) -> Dict[str, Any]:
        regressions: List[Dict[str, Any]] = []
        counters: List[Dict[str, Any]] = []
        for (ep, kind, field), per in self.diffs.items():
            total = self.requests.get(ep, 0)
            noise = per[self.baseline][0] if self.baseline in per else 0
            for t, (raw, examples) in per.items():
                if t == self.baseline:
                    continue
                reported = self._judge(raw, noise, total)
                counters.append({"endpoint": ep, "target": t, "kind": kind, "field": field,
                                 "raw": raw, "noise": noise, "requests": total,
                                 "reported": reported})
                if reported:
                    regressions.append({"endpoint": ep, "target": t, "kind": kind,
                                        "field": field, "count": raw, "noise": noise,
                                        "requests": total, "examples": examples})
            if self.baseline in per and not any(t != self.baseline for t in per):
                counters.append({"endpoint": ep, "target": None, "kind": kind, "field": field,
                                 "raw": 0, "noise": noise, "requests": total,
                                 "reported": False})
        latency, slow = self._latency()
        regressions += slow
        order = {"status": 0, "latency": 1, "field": 2, "size": 3, "body": 4}
        regressions.sort(key=lambda g: (g["endpoint"], g["target"], order[g["kind"]],
                                        g["field"] or ""))
        counters.sort(key=lambda c: (-c["raw"], -c["noise"], c["endpoint"], c["field"] or ""))
        return {
            "records": self.records,
            "skipped_no_online_answer": self.skipped,
            "baseline": self.baseline,
            "targets": sorted(self.targets),
            "rules": self.rules.__dict__.copy(),
            "endpoints": {ep: self.requests[ep] for ep in sorted(self.requests)},
            "regressions": regressions,
            "latency": latency,
            "differences": counters[:500],
        }
