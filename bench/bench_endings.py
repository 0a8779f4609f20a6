"""Five consecutive runs of the session-endings set in the netns lab (issue 11):
the three client-abort variants, the small request after a 1 MiB download,
keep-alive sessions whose first SYN the online host dropped, and offline
replay into the target's TIME_WAIT — 50 connections each (200 requests for
TIME_WAIT).  Each run builds a fresh lab (tests/e2e/test_session_endings.py)
and prints, per scenario: connections ended on the target exactly as on
online, their endings, the worst lateness of a request against the online
gap before it, and the offline replay's delivery.  Needs root.  Prints
figures; not a test.

    python3 bench/bench_endings.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ["half_request", "half_post", "part_download", "big_then_small", "keepalive_dyn"]


def one_run(i: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ps-endings-") as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, PYCOPY_ENDINGS_OUT=str(out))
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/e2e/test_session_endings.py"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        data = json.loads(out.read_text()) if out.exists() else {}
        data["_elapsed"] = time.monotonic() - t0
        data["_summary"] = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
        data["_failures"] = [line for line in res.stdout.splitlines() if line.startswith("FAILED")]
        return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    for i in range(1, args.runs + 1):
        d = one_run(i)
        print(f"run {i}: {d['_summary']} ({d['_elapsed']:.0f} s)")
        for sc in SCENARIOS:
            r = d.get(sc)
            if r is None:
                print(f"  {sc:15s} no result")
                continue
            late = "-" if r["max_late_ms"] is None else f"{r['max_late_ms']:+.1f} ms"
            print(f"  {sc:15s} same ending {r['same']}/{r['online']} (target logged {r['target']}), "
                  f"requests {r['requests_target']}/{r['requests_online']}, "
                  f"online {r['online_endings']} target {r['target_endings']}, worst lateness {late}")
        syn = d.get("keepalive_dyn_syn")
        if syn:
            print(f"  {'':15s} first SYNs dropped on online: {syn['dropped_syns']}, "
                  f"clients that connected only after >= 0.9 s: {syn['late_connects']}")
        for k, tw in enumerate(d.get("time_wait", [])):
            print(f"  time_wait replay {k + 1}: delivered {tw['delivered']}/200, failed by reason "
                  f"{tw['failed'] or '{}'}")
        for f in d["_failures"]:
            print("  " + f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
