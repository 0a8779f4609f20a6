"""Small SVG plots written by hand: no plotting library, nothing to fetch."""

from __future__ import annotations

import math
from html import escape
from typing import Dict, List, Sequence, Tuple

from .analysis import percentile

PALETTE = ["#1f5fa8", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c"]
KIND_COLOURS = {"status": "#c92a2a", "latency": "#e67700", "field": "#1971c2",
                "size": "#2b8a3e", "body": "#7048e8"}


def _ticks(hi: float, n: int = 5) -> List[float]:
    """Round tick values from 0 to at least ``hi``."""
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(hi / step)) + 1)]


def _num(v: float) -> str:
    return ("%.0f" % v) if v >= 10 or v == int(v) else ("%.1f" % v)


def latency_cdf(title: str, series: Dict[str, List[float]], width: int = 560,
                height: int = 260) -> str:
    """Cumulative distributions of answer times (ms), one line per answerer,
    cut at the largest p99.5 so one outlier does not flatten the rest."""
    left, right, top, bottom = 48, 190, 26, 36
    pw, ph = width - left - right, height - top - bottom
    data = {k: sorted(v) for k, v in series.items() if v}
    hi = max([percentile(v, 99.5) for v in data.values()] + [1e-3])
    ticks = _ticks(hi)
    xmax = ticks[-1]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" class="plot latency" width="%d" height="%d" '
           'viewBox="0 0 %d %d" role="img" aria-label="%s">' % (width, height, width, height,
                                                                escape(title)),
           '<title>%s</title>' % escape(title),
           '<text x="%d" y="16" class="ptitle">%s</text>' % (left, escape(title))]
    for t in ticks:
        x = left + pw * t / xmax
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="grid"/>'
                   % (x, top, x, top + ph))
        out.append('<text x="%.1f" y="%d" class="tick" text-anchor="middle">%s</text>'
                   % (x, top + ph + 14, _num(t)))
    for q in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        y = top + ph * (1 - q)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="grid"/>'
                   % (left, y, left + pw, y))
        out.append('<text x="%d" y="%.1f" class="tick" text-anchor="end">%d%%</text>'
                   % (left - 4, y + 4, round(q * 100)))
    out.append('<text x="%d" y="%d" class="tick" text-anchor="middle">ms to the last byte '
               '(y: share of answers at most that slow)</text>' % (left + pw // 2, height - 4))
    for i, (name, v) in enumerate(data.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = []
        steps = min(len(v), 200)
        for s in range(steps + 1):
            q = s / steps
            x = left + pw * min(percentile(v, q * 100), xmax) / xmax
            pts.append("%.1f,%.1f" % (x, top + ph * (1 - q)))
        out.append('<polyline class="series" data-series="%s" fill="none" stroke="%s" '
                   'stroke-width="2" points="%s"/>' % (escape(name), colour, " ".join(pts)))
        ly = top + 12 + i * 34
        out.append('<rect x="%d" y="%d" width="12" height="4" fill="%s"/>'
                   % (left + pw + 12, ly - 4, colour))
        out.append('<text x="%d" y="%d" class="legend">%s</text>'
                   % (left + pw + 28, ly, escape(name)))
        out.append('<text x="%d" y="%d" class="tick">p50 %s · p99 %s ms (n=%d)</text>'
                   % (left + pw + 28, ly + 14, _num(percentile(v, 50)), _num(percentile(v, 99)),
                      len(v)))
    out.append("</svg>")
    return "\n".join(out)


def regressions_bars(rows: Sequence[Tuple[str, Dict[str, int]]], width: int = 720) -> str:
    """Regressions per endpoint: one stacked bar per endpoint, a segment per kind."""
    kinds = list(KIND_COLOURS)
    label_w, bar_h, gap, top = 250, 18, 8, 30
    height = top + max(1, len(rows)) * (bar_h + gap) + 30
    most = max([sum(k.values()) for _, k in rows] + [1])
    ticks = _ticks(most, min(most, 5))
    pw = width - label_w - 20
    out = ['<svg xmlns="http://www.w3.org/2000/svg" class="plot regressions" width="%d" '
           'height="%d" viewBox="0 0 %d %d" role="img" aria-label="regressions per endpoint">'
           % (width, height, width, height),
           '<title>regressions per endpoint</title>']
    x = label_w
    for kind in kinds:  # legend
        out.append('<rect x="%d" y="6" width="10" height="10" fill="%s"/>'
                   % (x, KIND_COLOURS[kind]))
        out.append('<text x="%d" y="15" class="legend">%s</text>' % (x + 14, kind))
        x += 80
    if not rows:
        out.append('<text x="%d" y="%d" class="legend">no regressions</text>'
                   % (label_w, top + bar_h))
    for i, (ep, per) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append('<text x="%d" y="%d" class="legend" text-anchor="end">%s</text>'
                   % (label_w - 6, y + bar_h - 4, escape(ep if len(ep) <= 36 else ep[:35] + "…")))
        x0 = float(label_w)
        for kind in kinds:
            n = per.get(kind, 0)
            if not n:
                continue
            w = pw * n / ticks[-1]
            out.append('<rect class="bar" data-kind="%s" x="%.1f" y="%d" width="%.1f" '
                       'height="%d" fill="%s"><title>%s: %d %s</title></rect>'
                       % (kind, x0, y, w, bar_h, KIND_COLOURS[kind], escape(ep), n, kind))
            x0 += w
    base = top + max(1, len(rows)) * (bar_h + gap)
    for t in ticks:
        tx = label_w + pw * t / ticks[-1]
        out.append('<text x="%.1f" y="%d" class="tick" text-anchor="middle">%s</text>'
                   % (tx, base + 12, _num(t)))
    out.append("</svg>")
    return "\n".join(out)
