"""py-spy profiles of the live runs (bench/run.py --py-spy DIR).

``py-spy record --format raw`` writes collapsed stacks: one line per distinct
stack, ``frame;frame;...;frame COUNT``, each frame ``function (path:line)``.
:func:`top` turns such a file into the functions that took the samples: by
self time (the innermost frame) and inclusive (anywhere on the stack, once per
sample).  Only samples of a running thread are recorded (py-spy leaves idle
ones out), so the shares are of the CPU the process used, not of wall time.
py-spy is not a dependency (``pip install py-spy``); sampling is non-blocking
and costs the profiled process little, but read the CPU columns of a profiled
run as approximate.

One known distortion: py-spy's idle detection misses part of the waiting in
``epoll_wait``, which then shows as ``io/loop.py:Loop.run_once``'s own
samples (28-36 % at 1,000 keep-alive requests/s on this machine kind, in
both py-spy modes), while ``perf record -e cpu-clock -p PID`` of the same run
puts under 1 % of the CPU in ``select_epoll_poll`` and ~19 % in the kernel
altogether, 74 % in libpython.  Read the other rows as shares of
the samples, not of the CPU time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^():]*)(?::\d+)?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None


def record(pid: int, out: Path, duration: float, rate: int = 250) -> subprocess.Popen:
    """Sample ``pid`` for ``duration`` seconds into ``out`` (raw format)."""
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking",
         "--format", "raw", "--duration", str(max(1, int(duration))), "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frame_name(frame: str) -> str:
    """``send (pycopy_engine/io/rawsend.py:70)`` -> ``io/rawsend.py:send``."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m.group("path")
    for cut in ("pycopy_engine/", "lib/python3"):
        i = path.rfind(cut)
        if i >= 0:
            path = path[i + len(cut):] if cut == "pycopy_engine/" else "stdlib"
            break
    return f"{path}:{m.group('func')}"


def parse(text: str) -> tuple[Counter, Counter, int]:
    """(self samples, inclusive samples, total samples) by function."""
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        n = int(m.group("count"))
        frames = [frame_name(f) for f in m.group("stack").split(";") if f.strip()]
        if not frames:
            continue
        # the process/thread frames py-spy may put first have no path
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    return own, incl, total


def top(path: Path, n: int = 12) -> str:
    """A two-column text table of the ``n`` heaviest functions of one profile."""
    try:
        own, incl, total = parse(path.read_text(errors="replace"))
    except FileNotFoundError:
        return f"{path.name}: no profile written"
    if not total:
        return f"{path.name}: no samples"
    rows = [f"{path.name}: {total} samples",
            f"  {'self %':>7}  {'function':<46}{'incl %':>8}  function"]
    a, b = own.most_common(n), incl.most_common(n)
    for i in range(max(len(a), len(b))):
        left = f"  {100 * a[i][1] / total:>6.1f}%  {a[i][0][:44]:<46}" if i < len(a) else " " * 57
        right = f"{100 * b[i][1] / total:>7.1f}%  {b[i][0]}" if i < len(b) else ""
        rows.append(left + right)
    return "\n".join(rows)
