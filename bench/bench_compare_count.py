"""CPU per record of tcpcopy --compare's live difference counters (prints figures).

core/compare_count.DiffCounter.count() on finished records, as the Comparer
hands them over (dicts: nothing is parsed again), for a few shapes:

- ``report corpus``: tests/unit/compare_data.py, online + baseline +
  candidate, small JSON bodies with noise fields (every field kind differs),
  a 500, plain-text and binary answers;
- ``json N fields, equal``: one target whose N-field JSON answer equals
  online's (the dictionary compare runs to the end: the worst case);
- ``json N fields, differ``: one field differs;
- ``overflow``: every record a new endpoint beyond --compare-max-endpoints.

Then the whole --compare core (bench/bench_compare.py's keep-alive run: the
same answer online and on the target, so every field is compared), and the
part of it spent in the counters, to put the figure next to the rest.

    python3 bench/bench_compare_count.py [--records 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_compare  # noqa: E402

from pycopy_engine.core.compare_count import DiffCounter  # noqa: E402
from pycopy_engine.core.stats import Stats  # noqa: E402
from tests.unit.compare_data import records as corpus  # noqa: E402


def json_records(n: int, fields: int, differ: bool) -> List[Dict[str, Any]]:
    out = []
    for i in range(n):
        f = {"items[%d].%s" % (j // 4, "abcd"[j % 4]): (j * 7 if j % 3 else "v%d" % j)
             for j in range(fields)}
        t = dict(f)
        if differ:
            t["items[0].b"] = -1
        on = {"status": 200, "headers": {"content-type": "application/json"}, "size": 900,
              "digest": "a" * 32, "fields": f, "first": 1.0, "last": 2.0}
        tg = dict(on, fields=t, first=1.1, last=2.2)
        out.append({"t": 1.0, "flow": "10.0.0.10:4000", "n": i, "proto": "http",
                    "req": {"method": "GET", "path": "/users/%d/orders?x=%d" % (i, i),
                            "size": 60, "digest": "b" * 32},
                    "answers": {"online": on, "10.0.0.12:80": tg}})
    return out


def per_record(recs: List[Dict[str, Any]], rounds: int, max_endpoints: int = 200) -> float:
    best = []
    for _ in range(rounds):
        d = DiffCounter(Stats(), max_endpoints)
        count = d.count
        t0 = time.process_time()
        for r in recs:
            count(r)
        best.append((time.process_time() - t0) / len(recs))
    return 1e6 * min(best)


def whole_core(requests: int, rounds: int, fields: int) -> tuple:
    """The same answer online and on the target (nothing differs: the counter's
    worst case); the time inside DiffCounter.count and the whole run's, both
    on the wall clock (perf_counter), the best round."""
    payload = b""
    if fields:
        payload = json.dumps({"items": [{"a": j, "b": "v%d" % j, "c": j % 2 == 0, "d": None}
                                        for j in range(fields // 4)]}).encode()
    best = None
    for _ in range(rounds):
        cmp, ev = bench_compare.build(requests, 2000, payload)
        inner = cmp.diffs.count
        spent = [0.0]

        def timed(rec: Dict[str, Any], inner: Any = inner, spent: List[float] = spent) -> None:
            t = time.perf_counter()
            inner(rec)
            spent[0] += time.perf_counter() - t

        cmp.diffs.count = timed  # type: ignore[method-assign]
        t0 = time.perf_counter()
        bench_compare.run(cmp, ev)
        total = time.perf_counter() - t0
        if best is None or total < best[0]:
            best = (total, spent[0])
    assert best is not None
    return 1e6 * best[0] / requests, 1e6 * best[1] / requests


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    n = a.records
    base = corpus(max(1, n // 6))
    targets = sum(len(r["answers"]) - 1 for r in base)
    print("live difference counters, us per record (best of %d rounds; CPU time):" % a.rounds)
    print("  report corpus (2 targets/record, %d records): %.2f us (%.2f per target answer)"
          % (len(base), per_record(base, a.rounds), per_record(base, a.rounds) * len(base)
             / targets))
    for fields in (10, 100, 512):
        for differ in (False, True):
            recs = json_records(n // 4, fields, differ)
            print("  json %3d fields, %-6s (1 target): %.2f us"
                  % (fields, "differ" if differ else "equal", per_record(recs, a.rounds)))
    over = copy.deepcopy(json_records(n // 4, 10, False))
    for i, r in enumerate(over):
        r["req"]["path"] = "/p%d/x" % i  # a new endpoint each time
    print("  overflow (every record a new endpoint beyond 200): %.2f us"
          % per_record(over, a.rounds))
    req = max(2000, n // 4)
    print("whole --compare core (bench_compare's keep-alive run, one target, %d requests"
          " (512 fields: %d)), us/request, best of %d rounds (wall clock):"
          % (req, req // 4, a.rounds))
    for fields, what in ((0, "2 KB JSON body, 3 fields"), (100, "JSON body, 100 fields"),
                         (512, "JSON body, 512 fields")):
        total, counting = whole_core(req if fields < 512 else req // 4, a.rounds, fields)
        print("  %-26s %.1f in all, %.1f of it counting differences (%.1f %%)"
              % (what + ":", total, counting, 100.0 * counting / total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
