"""bench/run.py's planning and table (pure functions; unit-tested in tests/unit).

With the C tools, every (mode, rate) point is measured for C and for pycopy,
``repeats`` times, the order alternating from one point to the next and from
one repeat to the next (C, pycopy | pycopy, C | ...), so that a drift of the
machine's load spreads over both tools; each figure is the median of its
repeats.  The table is issue 13's: CPU per request of tcpcopy and of
intercept, C -> pycopy with the ratio, and each side's fidelity.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

C, PY = "c", "pycopy"
MODE_NAMES = {"keepalive": "keep-alive", "close": "short"}


@dataclass(frozen=True, slots=True)
class Run:
    mode: str  # keepalive | close
    rate: str  # offered requests/s, or "max"
    tool: str  # C | PY
    rep: int


@dataclass(frozen=True, slots=True)
class Measure:
    mode: str
    rate: str
    tool: str
    achieved: float  # requests/s the online server logged
    online: int  # requests the online server logged
    target: int  # requests the target logged
    tcpcopy_us: float  # tcpcopy CPU per online request
    intercept_us: float | None  # None: no intercept (own-address mode)
    drops: int | None  # kernel capture drops during the run; None: not known

    @property
    def fidelity(self) -> float:
        return self.target / self.online if self.online else 0.0


def plan_runs(modes: Sequence[str], rates: Sequence[str], tools: Sequence[str],
              repeats: int = 1) -> list[Run]:
    """Every point for every tool, ``repeats`` times; the tools' order flips
    at each point and each repeat.  One tool: the points in order, repeated."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    if not tools:
        raise ValueError("no tool to run")
    points = [(m, r) for m in modes for r in rates]
    runs = []
    for rep in range(repeats):
        for i, (mode, rate) in enumerate(points):
            order = list(tools) if (i + rep) % 2 == 0 else list(reversed(tools))
            runs.extend(Run(mode, rate, tool, rep) for tool in order)
    return runs


def switches(runs: Sequence[Run]) -> int:
    """How many times the running tool changes (each change restarts the pair)."""
    return sum(1 for a, b in zip(runs, runs[1:]) if a.tool != b.tool)


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    achieved_lo: float
    achieved_hi: float
    fidelity: float
    tcpcopy_us: float
    intercept_us: float | None
    drops: int | None  # the largest of the repeats


def _median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


def summarize(measures: Iterable[Measure]) -> dict[tuple[str, str], dict[str, Summary]]:
    """Median figures per point and tool, in the order the points first appear."""
    groups: dict[tuple[str, str], dict[str, list[Measure]]] = {}
    for m in measures:
        groups.setdefault((m.mode, m.rate), {}).setdefault(m.tool, []).append(m)
    out: dict[tuple[str, str], dict[str, Summary]] = {}
    for point, by_tool in groups.items():
        out[point] = {}
        for tool, ms in by_tool.items():
            ics = [m.intercept_us for m in ms if m.intercept_us is not None]
            drops = [m.drops for m in ms if m.drops is not None]
            out[point][tool] = Summary(
                len(ms), min(m.achieved for m in ms), max(m.achieved for m in ms),
                _median(m.fidelity for m in ms), _median(m.tcpcopy_us for m in ms),
                _median(ics) if ics else None, max(drops) if drops else None)
    return out


def _k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def rate_label(rate: str, sums: Sequence[Summary]) -> str:
    if rate != "max":
        return f"{int(rate):,}"
    lo = min(s.achieved_lo for s in sums)
    hi = max(s.achieved_hi for s in sums)
    return f"max (~{_k(lo)})" if _k(lo) == _k(hi) else f"max (~{_k(lo)}-{_k(hi)})"


def _us(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _ratio(c: float | None, p: float | None) -> str:
    if c is None or p is None:
        return f"{_us(c)} -> {_us(p)}"
    if c <= 0:
        return f"{_us(c)} -> {_us(p)} (n/a)"
    return f"{_us(c)} -> {_us(p)} ({p / c:.2f}x)"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _drops(x: int | None) -> str:
    return "-" if x is None else str(x)


def render_table(sums: dict[tuple[str, str], dict[str, Summary]]) -> str:
    """Markdown table: side by side when C was measured, pycopy alone otherwise."""
    with_c = any(C in by_tool for by_tool in sums.values())
    if with_c:
        head = ["mode", "rate (req/s)", "tcpcopy us/req C -> pycopy",
                "intercept us/req C -> pycopy", "fidelity C -> pycopy", "kernel drops pycopy"]
    else:
        head = ["mode", "rate (req/s)", "tcpcopy us/req", "intercept us/req", "fidelity",
                "kernel drops"]
    rows = [head]
    for (mode, rate), by_tool in sums.items():
        label = rate_label(rate, list(by_tool.values()))
        name = MODE_NAMES.get(mode, mode)
        p = by_tool.get(PY)
        if with_c:
            c = by_tool.get(C)
            rows.append([
                name, label,
                _ratio(c.tcpcopy_us if c else None, p.tcpcopy_us if p else None),
                _ratio(c.intercept_us if c else None, p.intercept_us if p else None),
                f"{_pct(c.fidelity) if c else '-'} -> {_pct(p.fidelity) if p else '-'}",
                _drops(p.drops if p else None),
            ])
        elif p is not None:
            rows.append([name, label, _us(p.tcpcopy_us), _us(p.intercept_us), _pct(p.fidelity),
                         _drops(p.drops)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
