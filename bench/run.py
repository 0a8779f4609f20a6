"""Replication benchmark in the four-namespace lab (prints figures; not a test).

Real nginx on online and target, wrk on the client at fixed offered rates
(keep-alive and short connections), pycopy's tcpcopy on online and intercept
on the assistant.  For each run it prints the achieved request rate, fidelity
(requests the target logged / requests the online server logged) and the CPU
time per request of tcpcopy and of intercept (utime + stime from /proc).

    python3 bench/run.py [--duration 5] [--rates 1000,5000,10000,max] [--modes keepalive,close]
    python3 bench/run.py --no-assistant   # own-address mode: no intercept, tcpcopy alone
    python3 bench/run.py --compare --rates 5000 --modes keepalive   # with tcpcopy --compare

In own-address mode the intercept column is empty: tcpcopy's own CPU per
request is what compares with tcpcopy + intercept of the classic rows.

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

from tests.lab.netns import Lab, cleanup_prefix  # noqa: E402

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


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rates", default="1000,5000,10000,max")
    ap.add_argument("--modes", default="keepalive,close")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--profile", help="write a cProfile of tcpcopy here")
    ap.add_argument("--tcpcopy-args", default="", help="extra tcpcopy options, e.g. '-i eth0'")
    ap.add_argument("--no-assistant", action="store_true",
                    help="own-address mode (tcpcopy --no-assistant, no intercept)")
    ap.add_argument("--compare", action="store_true",
                    help="tcpcopy --compare into a temporary directory (issue 9): the records"
                         " written are counted after the runs")
    ap.add_argument("--prefix", default=PREFIX, help=f"lab prefix ({PREFIX})")
    ap.add_argument("--subnet", default=SUBNET, help=f"lab subnet ({SUBNET})")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed (apt-get install nginx-light wrk)")
    work = Path(tempfile.mkdtemp(prefix="pycopy-bench-"))
    os.chmod(work, 0o755)
    cleanup_prefix(args.prefix)
    results = []
    cmp_dir = work / "compare"
    if args.compare:
        args.tcpcopy_args += " --compare %s" % cmp_dir
    with Lab(args.prefix, args.subnet) as lab:
        procs = []
        for name in ("online", "target"):
            conf = work / f"nginx-{name}.conf"
            conf.write_text(NGINX_CONF.format(dir=work, name=name, ip=lab.ip[name]))
            procs.append(lab.popen(name, ["nginx", "-c", str(conf)]))
        t, a, o = lab.ip["target"], lab.ip["assistant"], lab.ip["online"]
        ic = None
        if not args.no_assistant:
            ic = lab.popen("assistant", [sys.executable, "-m", "pycopy_engine.cli.intercept",
                                         "-i", "eth0", "-F", "tcp and src port 80", "-l",
                                         str(work / "intercept.log")])
            time.sleep(1.5)
        where = ["--no-assistant"] if args.no_assistant else ["-s", a]
        tc = lab.popen("online", env=lab.env({"PYCOPY_PROFILE": args.profile} if args.profile else None), argv=[sys.executable, "-m", "pycopy_engine.cli.tcpcopy", "-x",
                                  f"{o}:80-{t}:80", *where, "-l", str(work / "tcpcopy.log"),
                                  *args.tcpcopy_args.split()])
        time.sleep(1.5)
        if tc.poll() is not None or (ic is not None and ic.poll() is not None):
            sys.exit("bench: tcpcopy or intercept did not start; see " + str(work))
        lua = work / "rate.lua"
        print(f"{'mode':<10}{'offered':>9}{'achieved/s':>12}{'fidelity':>10}"
              f"{'tcpcopy us/req':>16}{'intercept us/req':>18}")
        for mode in args.modes.split(","):
            for rate in args.rates.split(","):
                conns = args.connections
                argv = ["wrk", "-t1", f"-c{conns}", f"-d{int(args.duration)}s", "--timeout", "5s"]
                if mode == "close":
                    argv += ["-H", "Connection: close"]
                if rate != "max":
                    per_conn_ms = conns * 1000.0 / float(rate)
                    lua.write_text(f"function delay() return {per_conn_ms:.3f} end\n")
                    argv += ["-s", str(lua)]
                argv.append(f"http://{o}/")
                on0, ta0 = lines(work / "access-online.log"), lines(work / "access-target.log")
                c_tc, c_ic = cpu_seconds(tc.pid), cpu_seconds(ic.pid) if ic else 0.0
                t0 = time.monotonic()
                r = lab.run("client", argv, check=False, timeout=args.duration + 60)
                if r.returncode:
                    print("wrk failed:", r.stdout[-500:], r.stderr[-500:])
                elapsed = time.monotonic() - t0
                on1 = wait_stable(work / "access-online.log")
                ta1 = wait_stable(work / "access-target.log")
                d_tc = cpu_seconds(tc.pid) - c_tc
                d_ic = cpu_seconds(ic.pid) - c_ic if ic else 0.0
                n_on, n_ta = on1 - on0, ta1 - ta0
                row = {
                    "mode": mode, "offered": rate, "achieved": n_on / elapsed,
                    "online": n_on, "target": n_ta,
                    "fidelity": (n_ta / n_on) if n_on else 0.0,
                    "tcpcopy_us": 1e6 * d_tc / n_on if n_on else 0.0,
                    "intercept_us": 1e6 * d_ic / n_on if n_on and ic else None,
                    "topology": "own-address" if args.no_assistant else "classic",
                }
                ic_us = "-" if row["intercept_us"] is None else f"{row['intercept_us']:.1f}"
                results.append(row)
                print(f"{mode:<10}{rate:>9}{row['achieved']:>12.0f}{100 * row['fidelity']:>9.2f}%"
                      f"{row['tcpcopy_us']:>16.1f}{ic_us:>18}", flush=True)
                time.sleep(1.0)
        for p in (tc, ic, *procs):
            if p is not None:
                lab.stop(p)
        tail = subprocess.run(["tail", "-n", "16", str(work / "tcpcopy.log")],
                              capture_output=True, text=True).stdout
        print("\ntcpcopy's last statistics:\n" + tail)
        if args.compare:
            recs = sum(lines(f) for f in cmp_dir.glob("compare-*.jsonl"))
            total = sum(r["online"] for r in results)
            print(f"--compare: {recs} records for {total} requests the online server logged")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
