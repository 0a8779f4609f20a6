"""Replication benchmark in the four-namespace lab (prints figures; not a test).

Real nginx on online and target, wrk on the client at fixed offered rates
(keep-alive and short connections), pycopy's tcpcopy on online and intercept
on the assistant.  For each run it prints the achieved request rate, fidelity
(requests the target logged / requests the online server logged) and the CPU
time per request of tcpcopy and of intercept (utime + stime from /proc).

    python3 bench/run.py [--duration 5] [--rates 1000,5000,10000,max] [--modes keepalive,close]
    python3 bench/run.py --no-assistant   # own-address mode: no intercept, tcpcopy alone
    python3 bench/run.py --compare --rates 5000 --modes keepalive   # with tcpcopy --compare
    python3 bench/run.py --rates max --modes keepalive --tcpcopy-args '-i eth0'   # AF_PACKET ring
    PYCOPY_C_TOOLS=/opt/tcpcopy-1.0/bin python3 bench/run.py --repeats 2   # side by side with C
    python3 bench/run.py --py-spy /tmp/prof --rates 5000 --modes keepalive   # where the CPU goes

In own-address mode the intercept column is empty: tcpcopy's own CPU per
request is what compares with tcpcopy + intercept of the classic rows.
``--tcpcopy-args`` go to pycopy's tcpcopy only (``-i eth0``: the lab's online
interface); ``--c-tcpcopy-args`` to the C one.  The kernel-drops column is
pycopy tcpcopy's capture_kernel_drops gauge (its --stats-json) over the row.

With ``PYCOPY_C_TOOLS`` naming a directory with the C TCPCopy 1.0 ``tcpcopy``
and ``intercept`` binaries (as tests/e2e/test_interop_c.py), every point runs
for C and for pycopy, alternately (bench/sidebyside.py), the pair restarted at
each switch, and the side-by-side table of issue 13 is printed at the end:
CPU per request C -> pycopy with the ratio, and each side's fidelity.

Needs root, nginx and wrk (Debian packages nginx-light and wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import pyspy  # noqa: E402
from bench.sidebyside import PY, C, Measure, plan_runs, render_table, summarize  # noqa: E402
from tests.lab.netns import Lab, LabError, cleanup_prefix  # noqa: E402

PREFIX, SUBNET = "pbn", "10.231.250"
TICK = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}.err warn;
events {{ worker_connections 4096; }}
http {{
    log_format lite '$remote_addr $remote_port $request';
    access_log {dir}/access-{name}.log lite buffer=256k flush=100ms;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {dir}/body-{name};
    server {{
        listen {ip}:80 reuseport backlog=4096;
        location / {{ return 200 "pycopy bench {name}\\n"; }}
    }}
}}
"""


def cpu_user_system(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_user_system(pid))


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def wait_stable(path: Path, settle: float = 1.0, limit: float = 15.0) -> int:
    """Line count once it stopped growing for ``settle`` seconds."""
    deadline = time.monotonic() + limit
    last, since = lines(path), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        n = lines(path)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last


def wait_for(pred, what: str, proc, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        if proc.poll() is not None:
            raise LabError(f"{what} exited {proc.returncode}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} not ready after {limit:.0f} s")
        time.sleep(0.05)


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def c_tools() -> Path | None:
    d = os.environ.get("PYCOPY_C_TOOLS", "")
    if not d:
        return None
    missing = [b for b in ("tcpcopy", "intercept") if not os.access(Path(d) / b, os.X_OK)]
    if missing:
        sys.exit(f"bench: PYCOPY_C_TOOLS={d}: no executable {', '.join(missing)} there")
    return Path(d)


class Pair:
    """tcpcopy on online and intercept on the assistant, of one tool (C or
    pycopy), each logging to ``work/<tool>-<prog>.log``."""

    def __init__(self, tool: str, lab: Lab, work: Path, args: argparse.Namespace,
                 cdir: Path | None, n: int) -> None:
        self.tool, self.lab = tool, lab
        o, t, a = lab.ip["online"], lab.ip["target"], lab.ip["assistant"]
        tag = f"{tool}-{n}"
        self.tc_log, self.ic_log = work / f"tcpcopy-{tag}.log", work / f"intercept-{tag}.log"
        self.stats = work / f"tcpcopy-{tag}.stats.json"
        self.ic = None
        if tool == C:
            assert cdir is not None
            self.ic = lab.popen("assistant", [str(cdir / "intercept"), "-i", "eth0", "-F",
                                              "tcp and src port 80", "-l", str(self.ic_log)])
            wait_for(lambda: "pcap_set_buffer_size" in read_text(self.ic_log), "C intercept",
                     self.ic)
            time.sleep(0.3)  # pcap_activate follows that line
            self.tc = lab.popen("online", [str(cdir / "tcpcopy"), "-x", f"80-{t}:80", "-s", a,
                                           "-l", str(self.tc_log), *args.c_tcpcopy_args.split()])
            wait_for(lambda: "connect to remote server" in read_text(self.tc_log), "C tcpcopy",
                     self.tc)
            time.sleep(0.3)  # the capture socket opens after the links
            return
        py = [args.python, "-m"]
        if not args.no_assistant:
            self.ic = lab.popen("assistant", [*py, "pycopy_engine.cli.intercept", "-i", "eth0",
                                              "-F", "tcp and src port 80", "-l", str(self.ic_log)])
            time.sleep(1.5)
        where = ["--no-assistant"] if args.no_assistant else ["-s", a]
        env = lab.env({"PYCOPY_PROFILE": args.profile} if args.profile else None)
        self.tc = lab.popen("online", env=env, argv=[
            *py, "pycopy_engine.cli.tcpcopy", "-x", f"{o}:80-{t}:80", *where,
            "-l", str(self.tc_log), "--stats-json", str(self.stats), "--stats-interval", "0.5",
            *args.tcpcopy_args.split()])
        wait_for(self.stats.exists, "pycopy tcpcopy", self.tc)
        if self.ic is not None and self.ic.poll() is not None:
            raise LabError(f"pycopy intercept exited {self.ic.returncode}")

    def drops(self) -> int | None:
        """pycopy tcpcopy's capture_kernel_drops gauge, as last written."""
        if self.tool != PY:
            return None
        for _ in range(20):
            try:
                return int(json.loads(self.stats.read_text())["counters"]
                           .get("capture_kernel_drops") or 0)
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        return None

    def cpu_split(self) -> list[tuple[str, tuple[float, float]]]:
        """(program, (user, system) seconds) of each running process."""
        return [(prog, cpu_user_system(p.pid))
                for prog, p in (("tcpcopy", self.tc), ("intercept", self.ic)) if p is not None]

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.tc.pid), cpu_seconds(self.ic.pid) if self.ic else 0.0

    def stop(self) -> None:
        for p in (self.tc, self.ic):
            if p is not None:
                self.lab.stop(p)


def wrk_argv(mode: str, rate: str, args: argparse.Namespace, url: str, lua: Path) -> list[str]:
    conns = args.connections
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{int(args.duration)}s", "--timeout", "5s"]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    if rate != "max":
        per_conn_ms = conns * 1000.0 / float(rate)
        lua.write_text(f"function delay() return {per_conn_ms:.3f} end\n")
        argv += ["-s", str(lua)]
    return argv + [url]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rates", default="1000,5000,10000,max")
    ap.add_argument("--modes", default="keepalive,close")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of each point per tool, medians printed (2 with C, else 1)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--profile", help="write a cProfile of tcpcopy here")
    ap.add_argument("--py-spy", metavar="DIR",
                    help="sample pycopy's tcpcopy and intercept with py-spy during each run,"
                         " write the raw profiles to DIR and print their heaviest functions"
                         " and each process's user/system CPU per request")
    ap.add_argument("--tcpcopy-args", default="",
                    help="extra options of pycopy's tcpcopy, e.g. '-i eth0'")
    ap.add_argument("--c-tcpcopy-args", default="", help="extra options of the C tcpcopy")
    ap.add_argument("--no-assistant", action="store_true",
                    help="own-address mode (tcpcopy --no-assistant, no intercept)")
    ap.add_argument("--compare", action="store_true",
                    help="tcpcopy --compare into a temporary directory (issue 9): the records"
                         " written are counted after the runs")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter of pycopy's tcpcopy and intercept (e.g. pypy3:"
                         " docs/pypy.md)")
    ap.add_argument("--prefix", default=PREFIX, help=f"lab prefix ({PREFIX})")
    ap.add_argument("--subnet", default=SUBNET, help=f"lab subnet ({SUBNET})")
    args = ap.parse_args()
    from pycopy_engine import accel  # make accel (docs/accel.md); PYCOPY_PURE=1: pure

    print(accel.describe(load=True), flush=True)
    if args.py_spy:
        if not pyspy.available():
            sys.exit("bench: --py-spy: py-spy is not installed (pip install py-spy)")
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (apt-get install nginx-light wrk)")
    cdir = c_tools()
    if cdir is not None and args.no_assistant:
        sys.exit("bench: PYCOPY_C_TOOLS: the C tools have no own-address mode; unset it")
    tools = [C, PY] if cdir is not None else [PY]
    repeats = args.repeats or (2 if cdir is not None else 1)
    runs = plan_runs(args.modes.split(","), args.rates.split(","), tools, repeats)
    if cdir is None:
        print("bench: PYCOPY_C_TOOLS is not set: pycopy alone (set it to a directory with the C"
              " tcpcopy and intercept for the side-by-side table)")
    work = Path(tempfile.mkdtemp(prefix="pycopy-bench-"))
    os.chmod(work, 0o755)
    cleanup_prefix(args.prefix)
    measures: list[Measure] = []
    cmp_dir = work / "compare"
    if args.compare:
        args.tcpcopy_args += " --compare %s" % cmp_dir
    last_log = None
    with Lab(args.prefix, args.subnet) as lab:
        procs = []
        for name in ("online", "target"):
            conf = work / f"nginx-{name}.conf"
            conf.write_text(NGINX_CONF.format(dir=work, name=name, ip=lab.ip[name]))
            procs.append(lab.popen(name, ["nginx", "-c", str(conf)]))
        o = lab.ip["online"]
        lua = work / "rate.lua"
        print(f"{'tool':<8}{'mode':<10}{'offered':>9}{'achieved/s':>12}{'fidelity':>10}"
              f"{'tcpcopy us/req':>16}{'intercept us/req':>18}{'kernel drops':>14}")
        pair: Pair | None = None
        try:
            for n, run in enumerate(runs):
                if pair is None or pair.tool != run.tool:
                    if pair is not None:
                        pair.stop()
                        time.sleep(1.0)
                    try:
                        pair = Pair(run.tool, lab, work, args, cdir, n)
                    except LabError as exc:
                        sys.exit(f"bench: {exc}; see {work}")
                    last_log = pair.tc_log
                argv = wrk_argv(run.mode, run.rate, args, f"http://{o}/", lua)
                on0, ta0 = lines(work / "access-online.log"), lines(work / "access-target.log")
                c_tc, c_ic = pair.cpu()
                split0 = pair.cpu_split()
                d0 = pair.drops()
                spies = []
                if args.py_spy and run.tool == PY:
                    for prog, proc in (("tcpcopy", pair.tc), ("intercept", pair.ic)):
                        if proc is not None:
                            out = Path(args.py_spy) / f"{prog}-{run.mode}-{run.rate}-{n}.txt"
                            spies.append((out, pyspy.record(proc.pid, out, args.duration)))
                t0 = time.monotonic()
                r = lab.run("client", argv, check=False, timeout=args.duration + 60)
                if r.returncode:
                    print("wrk failed:", r.stdout[-500:], r.stderr[-500:])
                elapsed = time.monotonic() - t0
                on1 = wait_stable(work / "access-online.log")
                ta1 = wait_stable(work / "access-target.log")
                e_tc, e_ic = pair.cpu()
                split1 = pair.cpu_split()
                time.sleep(0.6)  # one more --stats-interval: the drops gauge is current
                d1 = pair.drops()
                n_on, n_ta = on1 - on0, ta1 - ta0
                m = Measure(
                    run.mode, run.rate, run.tool, n_on / elapsed, n_on, n_ta,
                    1e6 * (e_tc - c_tc) / n_on if n_on else 0.0,
                    (1e6 * (e_ic - c_ic) / n_on if n_on else 0.0) if pair.ic else None,
                    None if d0 is None or d1 is None else d1 - d0)
                measures.append(m)
                ic_us = "-" if m.intercept_us is None else f"{m.intercept_us:.1f}"
                drops = "-" if m.drops is None else str(m.drops)
                print(f"{run.tool:<8}{run.mode:<10}{run.rate:>9}{m.achieved:>12.0f}"
                      f"{100 * m.fidelity:>9.2f}%{m.tcpcopy_us:>16.1f}{ic_us:>18}{drops:>14}",
                      flush=True)
                if spies:
                    for (prog, (u0, s0)), (u1, s1) in zip(split0, [x[1] for x in split1]):
                        if n_on:
                            print(f"  {prog}: user {1e6 * (u1 - u0) / n_on:.1f} + system"
                                  f" {1e6 * (s1 - s0) / n_on:.1f} us/req")
                    for out, spy in spies:
                        try:
                            spy.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            spy.kill()
                            spy.wait()
                        print(pyspy.top(out))
                time.sleep(1.0)
        finally:
            if pair is not None:
                pair.stop()
            for p in procs:
                lab.stop(p)
        if last_log is not None:
            tail = subprocess.run(["tail", "-n", "16", str(last_log)],
                                  capture_output=True, text=True).stdout
            print("\nlast tcpcopy's last statistics:\n" + tail)
        if args.compare:
            recs = sum(lines(f) for f in cmp_dir.glob("compare-*.jsonl"))
            total = sum(m.online for m in measures if m.tool == PY)
            print(f"--compare: {recs} records for {total} requests the online server logged")
    print(("\nmedians of %d run(s) per point and tool\n" % repeats) +
          render_table(summarize(measures)))
    if args.json:
        Path(args.json).write_text(json.dumps([
            {"mode": m.mode, "offered": m.rate, "tool": m.tool, "achieved": m.achieved,
             "online": m.online, "target": m.target, "fidelity": m.fidelity,
             "tcpcopy_us": m.tcpcopy_us, "intercept_us": m.intercept_us,
             "kernel_drops": m.drops,
             "topology": "own-address" if args.no_assistant else "classic"}
            for m in measures], indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
