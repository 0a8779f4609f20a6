"""report.html: one static file from a jinja2 template, SVG plots inline."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .records import InputError
from .svg import KIND_COLOURS, latency_cdf, regressions_bars


def render(summary: Dict[str, Any], samples: Dict[str, Dict[str, List[float]]]) -> str:
    try:
        import jinja2
        from markupsafe import Markup
    except ImportError:
        raise InputError("report.html needs jinja2: pip install 'pycopy-engine[compare]' "
                         "(summary.json is written)") from None
    env = jinja2.Environment(loader=jinja2.PackageLoader("pycopy_engine.compare", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    per_ep: Dict[str, Dict[str, int]] = {}
    for g in summary["regressions"]:
        kinds = per_ep.setdefault(g["endpoint"], {})
        kinds[g["kind"]] = kinds.get(g["kind"], 0) + 1
    bars: List[Tuple[str, Dict[str, int]]] = sorted(per_ep.items(),
                                                     key=lambda kv: -sum(kv[1].values()))
    endpoints = []
    for ep, n in sorted(summary["endpoints"].items(),
                        key=lambda kv: (kv[0] not in per_ep, -kv[1], kv[0])):
        series = samples.get(ep, {})
        ordered = {who: series[who] for who in ["online"] + sorted(w for w in series
                                                                   if w != "online")
                   if who in series}
        endpoints.append({
            "name": ep, "requests": n,
            "latency": summary["latency"].get(ep, {}),
            "plot": Markup(latency_cdf("%s: latency" % ep, ordered)),
            "regressions": [g for g in summary["regressions"] if g["endpoint"] == ep],
        })
    template = env.get_template("report.html.j2")
    return template.render(s=summary, bars=Markup(regressions_bars(bars)),
                           endpoints=endpoints, colours=KIND_COLOURS)
