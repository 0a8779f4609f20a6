"""``pycopy-compare DIR [--baseline IP:PORT]``: the report of a comparison experiment.

Reads every ``DIR/compare-*.jsonl`` written by ``tcpcopy --compare DIR``,
writes ``DIR/summary.json`` and ``DIR/report.html`` (one static file, SVG
plots inside, nothing fetched when it is opened) and prints the regressions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from .analysis import Analysis, Rules
from .records import InputError, parse_target, read_records, record_files


def _parser() -> argparse.ArgumentParser:
    d = Rules()
    p = argparse.ArgumentParser(
        prog="pycopy-compare",
        description="Compare the answers of the targets with online's, cancel the noise a "
                    "baseline target shows, and report the regressions.")
    p.add_argument("dir", metavar="DIR", help="the directory of tcpcopy --compare DIR")
    p.add_argument("--baseline", metavar="IP:PORT",
                   help="a target running online's version: its differences are noise")
    p.add_argument("--relative-threshold", type=float, default=d.relative, metavar="PCT",
                   help="|raw-noise|/(raw+noise) must exceed this, percent (default %(default)s)")
    p.add_argument("--absolute-threshold", type=float, default=d.absolute, metavar="PCT",
                   help="|raw-noise|/requests of the endpoint must exceed this, percent "
                        "(default %(default)s)")
    p.add_argument("--z", type=float, default=d.z,
                   help="raw-noise must exceed z*sqrt(raw+noise); 0 turns it off "
                        "(default %(default)s)")
    p.add_argument("--latency-pct", type=float, default=d.latency_rel, metavar="PCT",
                   help="a latency rise must exceed this percent of online's (default "
                        "%(default)s)")
    p.add_argument("--latency-ms", type=float, default=d.latency_ms, metavar="MS",
                   help="... and this many ms (default %(default)s)")
    p.add_argument("--min-samples", type=int, default=d.min_samples, metavar="N",
                   help="latency is judged with at least N answers each (default %(default)s)")
    p.add_argument("--min-samples-p99", type=int, default=d.min_samples_p99, metavar="N",
                   help="p99 is judged with at least N answers each (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no table on the terminal")
    return p


def run(directory: str, baseline: Optional[str], rules: Rules) -> Dict[str, Any]:
    """Analyse DIR, write summary.json and report.html, return the summary."""
    files = record_files(directory)
    analysis = Analysis(baseline, rules)
    bad = 0
    for status, item in read_records(files):
        if status == "ok":
            analysis.add(item)
        else:
            bad += 1
    if not analysis.records:
        raise InputError("%s: no records in %d compare-*.jsonl file(s)%s"
                         % (directory, len(files), " (%d bad lines)" % bad if bad else ""))
    if baseline is not None and baseline not in analysis.targets:
        raise InputError("--baseline %s is not one of the targets in %s: %s"
                         % (baseline, directory, ", ".join(sorted(analysis.targets)) or "none"))
    summary = analysis.summary()
    summary.update({"files": [os.path.basename(f) for f in files], "bad_lines": bad,
                    "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    tmp = os.path.join(directory, ".summary.json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, sort_keys=False, default=str)
        fh.write("\n")
    os.replace(tmp, os.path.join(directory, "summary.json"))
    from .html import render  # jinja2 is needed only here
    html = render(summary, {ep: {who: s.values for who, s in per.items()}
                            for ep, per in analysis.lat.items()})
    tmp = os.path.join(directory, ".report.html.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(html)
    os.replace(tmp, os.path.join(directory, "report.html"))
    return summary


def table(summary: Dict[str, Any], directory: str) -> str:
    """The short terminal view: the regressions, one a line."""
    regs: List[Dict[str, Any]] = summary["regressions"]
    targets = ["%s (baseline)" % t if t == summary["baseline"] else t for t in summary["targets"]]
    lines = ["pycopy-compare: %d requests, %d endpoints; targets: %s" % (
        summary["records"], len(summary["endpoints"]), ", ".join(targets) or "none")]
    if not regs:
        lines.append("no regressions")
    else:
        rows = [("ENDPOINT", "TARGET", "KIND", "FIELD", "COUNT")]
        for g in regs:
            count = "%d/%d" % (g["count"], g["requests"]) if "requests" in g else (
                " ".join("%s %+.1fms" % kv for kv in g["change_ms"].items()))
            rows.append((g["endpoint"], g["target"], g["kind"], g["field"] or "", count))
        widths = [min(40, max(len(r[i]) for r in rows)) for i in range(5)]
        for r in rows:
            lines.append("  ".join(c[:40].ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append("report: %s  summary: %s" % (os.path.join(directory, "report.html"),
                                              os.path.join(directory, "summary.json")))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        baseline = parse_target(args.baseline) if args.baseline is not None else None
        for name in ("relative_threshold", "absolute_threshold", "z", "latency_pct",
                     "latency_ms"):
            if getattr(args, name) < 0:
                raise InputError("--%s %s: must not be negative"
                                 % (name.replace("_", "-"), getattr(args, name)))
        if args.min_samples < 1:
            raise InputError("--min-samples %d: must be at least 1" % args.min_samples)
        if args.min_samples_p99 < 1:
            raise InputError("--min-samples-p99 %d: must be at least 1" % args.min_samples_p99)
        rules = Rules(args.relative_threshold, args.absolute_threshold, args.z,
                      args.latency_pct, args.latency_ms, args.min_samples, args.min_samples_p99)
        summary = run(args.dir, baseline, rules)
    except InputError as e:
        print("pycopy-compare: %s" % e, file=sys.stderr)
        return 2
    if not args.quiet:
        print(table(summary, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
