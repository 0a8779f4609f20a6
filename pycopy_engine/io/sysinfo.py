"""Read the host for ``doctor``: capabilities, sysctls, routes, conntrack, firewall.

Every function reads only (``/proc``, ``/sys``, ``ip -j route get``,
``iptables-save``, ``nft -j list ruleset``) or opens a socket briefly; none
changes the host.  Firewall rules are judged in :mod:`pycopy_engine.io.firewall`
(re-exported here): a rule that certainly matches the probe packet is reported
as a drop, one that may match (conditions this reader does not evaluate) as a
possible drop.
"""

from __future__ import annotations

import json
import operator
import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

# firewall rule evaluation lives in io.firewall; doctor and the tests reach it from here
from pycopy_engine.io.firewall import FirewallHit as FirewallHit
from pycopy_engine.io.firewall import Probe as Probe
from pycopy_engine.io.firewall import firewall_drops as firewall_drops
from pycopy_engine.io.firewall import iptables_backend as iptables_backend
from pycopy_engine.io.firewall import iptables_drops as iptables_drops
from pycopy_engine.io.firewall import iptables_save as iptables_save
from pycopy_engine.io.firewall import nft_drops as nft_drops
from pycopy_engine.io.firewall import nft_ruleset as nft_ruleset

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
PROC_SYS = "/proc/sys"


# -- capabilities and sysctls -----------------------------------------------------


def cap_effective(status_path: str = "/proc/self/status") -> int:
    """The effective capability bit mask of this process (CapEff)."""
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_cap(cap: int, status_path: str = "/proc/self/status") -> bool:
    return bool(cap_effective(status_path) >> cap & 1)


def read_sysctl(path: str) -> str | None:
    """``path`` relative to /proc/sys, with slashes (``net/ipv4/ip_forward``)."""
    try:
        with open(os.path.join(PROC_SYS, path)) as f:
            return f.read().strip()
    except OSError:
        return None


def ip_forward() -> int | None:
    v = read_sysctl("net/ipv4/ip_forward")
    return int(v) if v is not None and v.isdigit() else None


@dataclass(frozen=True)
class RpFilter:
    all: int
    default: int
    iface: int | None  # None when the interface does not exist
    name: str

    @property
    def effective(self) -> int:
        """The kernel uses max(conf/all, conf/<iface>)."""
        return max(self.all, self.iface if self.iface is not None else self.default)


def rp_filter(iface: str) -> RpFilter:
    def get(key: str) -> int | None:
        v = read_sysctl(f"net/ipv4/conf/{key}/rp_filter")
        return int(v) if v is not None and v.isdigit() else None

    return RpFilter(get("all") or 0, get("default") or 0, get(iface), iface)


def conntrack() -> tuple[int, int] | None:
    """(count, max) of nf_conntrack, or None when the module is not loaded."""
    count = read_sysctl("net/netfilter/nf_conntrack_count")
    limit = read_sysctl("net/netfilter/nf_conntrack_max")
    if count is None or limit is None:
        return None
    return int(count), int(limit)


# -- interfaces, routes, sockets ------------------------------------------------------


def iface_state(iface: str) -> str | None:
    """``up``/``down``/``unknown``… from /sys, or None if there is no such interface."""
    base = f"/sys/class/net/{iface}"
    if not os.path.isdir(base):
        return None
    try:
        with open(base + "/flags") as f:
            flags = int(f.read(), 16)
    except OSError:
        flags = 0
    if not flags & 1:  # IFF_UP
        return "down"
    try:
        with open(base + "/operstate") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def route_get(dst: str, src: str | None = None, iif: str | None = None) -> dict[str, Any] | None:
    """The route the kernel would use (``ip -j route get``), or None if unreachable."""
    argv = ["ip", "-j", "route", "get", dst]
    if src:
        argv += ["from", src]
    if iif:
        argv += ["iif", iif]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    try:
        routes = json.loads(res.stdout)
    except ValueError:
        return None
    if not routes:
        return None
    route: dict[str, Any] = routes[0]
    if route.get("type") in ("unreachable", "blackhole", "prohibit"):
        return None
    return route


def local_addresses() -> list[str]:
    try:
        res = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10
        )
        data = json.loads(res.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    return [a["local"] for i in data for a in i.get("addr_info", []) if "local" in a]


def tcp_reachable(host: str, port: int, timeout: float = 2.0) -> str | None:
    """None if a TCP connect succeeds, else the reason (``connection refused``…)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except OSError as e:
        return (e.strerror or str(e)).lower()


def tcp_listening(port: int, path: str = "/proc/net/tcp") -> bool:
    """Whether a local socket listens on ``port`` (any address) in this namespace."""
    for p in (path, path + "6"):
        try:
            with open(p) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return False


def capture_error(iface: str) -> str | None:
    """None if an AF_PACKET socket opens and binds on ``iface``, else why not."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    except PermissionError:
        return "AF_PACKET needs CAP_NET_RAW"
    except OSError as e:
        return f"cannot open AF_PACKET socket: {e.strerror}"
    try:
        s.bind((iface, 0x0800))
    except OSError as e:
        return f"cannot bind to {iface}: {e.strerror}"
    finally:
        s.close()
    return None


# -- pcap filters --------------------------------------------------------------------


def filter_error(expr: str) -> str | None:
    """None if libpcap compiles ``expr`` (for packets starting at the IP header)."""
    from pycopy_engine.errors import ConfigError
    from pycopy_engine.io.bpf import compile_filter

    try:
        compile_filter(expr)
    except ConfigError as e:
        return str(e)
    return None


def filter_matches(expr: str, packet: bytes) -> bool:
    """Whether the compiled filter accepts ``packet`` (raw IPv4), run here in Python."""
    from pycopy_engine.io.bpf import compile_filter, unpack_insns

    return bpf_run(unpack_insns(compile_filter(expr)), packet) > 0


_ALU = {
    0x00: operator.add, 0x10: operator.sub, 0x20: operator.mul, 0x30: operator.floordiv,
    0x40: operator.or_, 0x50: operator.and_, 0x60: operator.lshift, 0x70: operator.rshift,
    0x90: operator.mod, 0xA0: operator.xor,
}  # fmt: skip


def bpf_run(insns: list[tuple[int, int, int, int]], pkt: bytes) -> int:
    """A classic BPF interpreter (the subset libpcap emits); returns the accept length."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(pkt)
    for _ in range(4096):
        if pc >= len(insns):
            return 0
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 7
        if cls in (0, 1):  # LD, LDX
            mode, size = code & 0xE0, code & 0x18
            if mode == 0x00:
                val = k
            elif mode == 0x60:
                val = mem[k & 15]
            elif mode == 0x80:
                val = n
            elif mode == 0xA0:  # ldxb 4*([k]&0xf)
                if k >= n:
                    return 0
                val = (pkt[k] & 0xF) << 2
            else:
                off = k + (x if mode == 0x40 else 0)
                width = {0x00: 4, 0x08: 2, 0x10: 1}[size]
                if k >= 0xFFFFF000 or off + width > n:
                    return 0  # ancillary data or out of bounds: no match
                val = int.from_bytes(pkt[off : off + width], "big")
            if cls == 0:
                a = val
            else:
                x = val
        elif cls == 2:
            mem[k & 15] = a
        elif cls == 3:
            mem[k & 15] = x
        elif cls == 4:  # ALU
            op, src = code & 0xF0, (x if code & 8 else k)
            if op == 0x80:
                a = -a & 0xFFFFFFFF
            elif op in (0x30, 0x90) and src == 0:
                return 0
            else:
                a = _ALU[op](a, src) & 0xFFFFFFFF
        elif cls == 5:  # JMP
            op, src = code & 0xF0, (x if code & 8 else k)
            if op == 0x00:
                pc += k
                continue
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if cond else jf
        elif cls == 6:  # RET
            rv = code & 0x18
            return a if rv == 0x10 else x if rv == 0x08 else k
        elif cls == 7:
            if code & 0xF8 == 0x80:
                a = x
            else:
                x = a
    return 0
