"""The light lab: four network namespaces on one bridge (spec/lab.md section 1).

    with Lab("pyi", "10.231.1") as lab:
        lab.run("client", ["ping", "-c1", lab.ip["online"]])

Hosts ``client`` .10, ``online`` .11, ``target`` .12 and ``assistant`` .13 on
``<subnet>.0/24``; each namespace is ``<prefix>-<host>`` with ``eth0`` on the
bridge ``<prefix>br`` of the root namespace (the bridge has no address, so no
traffic can leave the lab).  On target: ``<client>/32 via <assistant>`` and
rp_filter 0; on assistant: ip_forward 0.

Every object carries the prefix.  Entering a lab first removes whatever a
crashed run with the same prefix left (processes in those namespaces are
killed by PID), but refuses a prefix whose registered owner is still alive
(another run in progress).  A registry file per lab, ``/run/pycopy-labs/<prefix>``, holds
the owner's PID, so :func:`reap_orphans` can remove labs whose owner died
without touching labs of runs still alive.  Teardown is idempotent and also
runs from atexit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOSTS = ("client", "online", "target", "assistant")
OCTETS = {"client": 10, "online": 11, "target": 12, "assistant": 13}
REGISTRY = Path("/run/pycopy-labs")
REPO_ROOT = Path(__file__).resolve().parents[2]


class LabError(RuntimeError):
    pass


_CLONE_NEWNET = 0x40000000
_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def _netns_list() -> list[str]:
    res = _ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    res = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _kill_pids(pids: list[int], grace: float = 2.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still "exists": reap it if we can
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def cleanup_prefix(prefix: str) -> None:
    """Remove every namespace ``<prefix>-*`` and root link ``<prefix>*``."""
    for ns in _netns_list():
        if ns.startswith(prefix + "-"):
            _kill_pids(_netns_pids(ns))
            _ip("netns", "del", ns, check=False)
    res = _ip("-o", "link", "show", check=False)
    for line in res.stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        if name.startswith(prefix + "-") or name == prefix + "br":
            _ip("link", "del", name, check=False)
    try:
        (REGISTRY / prefix).unlink()
    except OSError:
        pass


def lab_owner(prefix: str) -> int | None:
    """The PID of the live process that owns the lab ``prefix``, if any."""
    try:
        pid = int((REGISTRY / prefix).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 0 and _alive(pid) else None


def reap_orphans(start: str) -> list[str]:
    """Clean up labs whose prefix starts with ``start`` and whose owner
    process is gone.  Returns the prefixes removed."""
    removed: list[str] = []
    if not REGISTRY.is_dir():
        return removed
    for entry in REGISTRY.iterdir():
        if not entry.name.startswith(start):
            continue
        try:
            pid = int(entry.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid and _alive(pid):
            continue
        cleanup_prefix(entry.name)
        removed.append(entry.name)
    return removed


def bridge_nf_loaded() -> bool:
    return Path("/proc/sys/net/bridge").is_dir()


class Lab:
    """Four hosts on one bridge; see the module docstring."""

    def __init__(self, prefix: str, subnet: str = "10.231.1") -> None:
        if not prefix or len(prefix) > 8 or not prefix.replace("-", "").isalnum():
            raise ValueError(f"lab prefix must be 1-8 letters/digits, not {prefix!r}")
        self.prefix = prefix
        self.subnet = subnet
        self.bridge = prefix + "br"
        self.ns = {h: f"{prefix}-{h}" for h in HOSTS}
        self.ip = {h: f"{subnet}.{OCTETS[h]}" for h in HOSTS}
        self.procs: list[subprocess.Popen[Any]] = []
        self._up = False
        self._atexit = False

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> Lab:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        owner = lab_owner(self.prefix)
        if owner is not None and owner != os.getpid():
            raise LabError(
                f"lab prefix {self.prefix!r} is in use by the live process {owner} "
                "(a concurrent run?): pick another prefix"
            )
        cleanup_prefix(self.prefix)
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / self.prefix).write_text(f"{os.getpid()}\n")
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        self._up = True
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        br = self.bridge
        extra = ["nf_call_iptables", "0", "nf_call_ip6tables", "0"] if bridge_nf_loaded() else []
        _ip("link", "add", br, "type", "bridge", *extra)
        _ip("link", "set", br, "up")
        for host in HOSTS:
            ns = self.ns[host]
            veth = f"{self.prefix}-{host[:3]}"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", br, "up")
            _ip("-n", ns, "addr", "add", f"{self.ip[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        for key in ("all", "default", "eth0"):
            self.sysctl("target", f"net.ipv4.conf.{key}.rp_filter", "0")
        self.add_route("target", self.ip["client"] + "/32", self.ip["assistant"])
        self.sysctl("assistant", "net.ipv4.ip_forward", "0")

    def close(self) -> None:
        if not self._up:
            return
        self._up = False
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()
        cleanup_prefix(self.prefix)

    # -- running things ----------------------------------------------------------
    def _argv(self, host: str, argv: list[str]) -> list[str]:
        if host not in self.ns:
            raise LabError(f"unknown lab host {host!r}")
        return ["ip", "netns", "exec", self.ns[host], *argv]

    @staticmethod
    def env(extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        pp = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
        env["PYTHONUNBUFFERED"] = "1"
        if extra:
            env.update(extra)
        return env

    def run(
        self, host: str, argv: list[str], check: bool = True, timeout: float = 60.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("env", self.env())
        kw.setdefault("cwd", str(REPO_ROOT))
        res = subprocess.run(self._argv(host, argv), timeout=timeout, **kw)
        if check and res.returncode != 0:
            raise LabError(
                f"{host}: {' '.join(argv)} exited {res.returncode}: "
                f"{(res.stderr or '').strip()[-2000:]}"
            )
        return res

    def popen(self, host: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a tracked process in ``host``; stopped by PID on teardown."""
        kw.setdefault("env", self.env())
        kw.setdefault("cwd", str(REPO_ROOT))
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self._argv(host, argv), **kw)
        self.procs.append(p)
        return p

    def python(self, host: str, module: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """popen ``python -m module args`` with this interpreter."""
        return self.popen(host, [sys.executable, "-m", module, *args], **kw)

    def stop(self, p: subprocess.Popen[Any], timeout: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """Move the calling thread into ``host``'s network namespace for the
        block: sockets made there stay in it (setns(2) is per thread).  Used
        by tests to open captures and raw senders in a lab host in-process."""
        ns_path = f"/run/netns/{self.ns[host]}"
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(ns_path, os.O_RDONLY)
        try:
            if _libc().setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise LabError(f"setns({ns_path}): {os.strerror(err)}")
            try:
                yield
            finally:
                if _libc().setns(own, _CLONE_NEWNET) != 0:
                    raise LabError("setns back to the original namespace failed")
        finally:
            os.close(target)
            os.close(own)

    # -- configuration -----------------------------------------------------------
    def add_route(self, host: str, dst: str, via: str) -> None:
        _ip("-n", self.ns[host], "route", "replace", dst, "via", via)

    def add_address(self, host: str, cidr: str, dev: str = "eth0") -> None:
        _ip("-n", self.ns[host], "addr", "add", cidr, "dev", dev)

    def sysctl(self, host: str, key: str, value: str | int) -> None:
        self.run(host, ["sysctl", "-qw", f"{key}={value}"], timeout=10)

    def read_sysctl(self, host: str, key: str) -> str:
        return self.run(host, ["sysctl", "-n", key], timeout=10).stdout.strip()


_LAB_REASON: list[str] = []


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if _LAB_REASON:
        return _LAB_REASON[0] or None
    reason = ""
    if os.geteuid() != 0:
        reason = "the netns lab needs root"
    elif shutil.which("ip") is None:
        reason = "the netns lab needs iproute2 (ip)"
    else:
        probe = f"pt{secrets.token_hex(3)}-probe"
        res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if res.returncode != 0:
            reason = f"ip netns add failed: {res.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    _LAB_REASON.append(reason)
    return reason or None


def new_lab_prefix() -> tuple[str, str]:
    """A prefix no namespace uses yet, and the subnet derived from it."""
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    while True:
        prefix = "pt" + secrets.token_hex(2)[:3]
        if f"{prefix}-" not in existing:
            return prefix, f"10.231.{100 + int(prefix[2:], 16) % 100}"
