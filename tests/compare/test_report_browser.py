"""report.html in a real headless browser (Debian's chromium): the SVG plots
are in the rendered page, laid out with real geometry, and nothing is
fetched from the network.

``PYCOPY_SCREENSHOT=docs/compare-report.png`` also saves the screenshot
there (the README's picture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pycopy_engine.compare.cli import main
from tests.unit.compare_data import BASELINE, CANDIDATE, records, write_dir

# Runs after layout: the geometry of every plot, series and bar, as the browser sees it.
PROBE = """<script>
window.addEventListener('load', function () {
  var out = {plots: [], resources: performance.getEntriesByType('resource').length};
  document.querySelectorAll('svg.plot').forEach(function (svg) {
    var r = svg.getBoundingClientRect();
    var p = {cls: svg.getAttribute('class'), w: r.width, h: r.height, series: [], bars: []};
    svg.querySelectorAll('polyline.series').forEach(function (l) {
      var b = l.getBBox();
      p.series.push({name: l.dataset.series, w: b.width, h: b.height, len: l.getTotalLength()});
    });
    svg.querySelectorAll('rect.bar').forEach(function (b) {
      var c = b.getBoundingClientRect();
      var hit = document.elementFromPoint(c.x + c.width / 2, c.y + c.height / 2);
      p.bars.push({kind: b.dataset.kind, w: c.width, h: c.height, hit: hit === b});
    });
    out.plots.push(p);
  });
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; "
                    "scripts/install-deps.sh installs it)")
    return exe


def _run(exe, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(tmp))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--user-data-dir=%s" % (tmp / "profile"),
           "--window-size=1200,1600", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = write_dir(tmp_path_factory.mktemp("cmp"), records())
    assert main([str(d), "--baseline", BASELINE, "-q"]) == 0
    return d


def test_plots_render_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    html = (report / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    r = _run(exe, tmp_path, "--virtual-time-budget=3000", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, "no probe output; chromium said: %s" % r.stderr[-2000:]
    out = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert out["resources"] == 0  # one static file: nothing else was loaded
    plots = out["plots"]
    latency = [p for p in plots if "latency" in p["cls"]]
    bars = [p for p in plots if "regressions" in p["cls"]]
    assert len(latency) == 6 and len(bars) == 1
    for p in plots:
        assert p["w"] > 300 and p["h"] > 100, p
    for p in latency:  # online and each target: a drawn line each
        assert [s["name"] for s in p["series"]] == ["online", BASELINE, CANDIDATE]
        assert all(s["len"] > 50 and s["h"] > 50 for s in p["series"]), p
    kinds = sorted(b["kind"] for b in bars[0]["bars"])
    assert kinds == ["field", "latency", "status"]
    assert all(b["w"] > 20 and b["h"] > 5 and b["hit"] for b in bars[0]["bars"]), bars


def test_screenshot_of_the_report(report, tmp_path):
    exe = _chromium()
    shot = tmp_path / "report.png"
    r = _run(exe, tmp_path, "--screenshot=%s" % shot, (report / "report.html").as_uri())
    assert shot.exists(), r.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600) and len(data) > 50_000  # a page, not a blank
    dest = os.environ.get("PYCOPY_SCREENSHOT")
    if dest:
        shutil.copyfile(shot, dest)
