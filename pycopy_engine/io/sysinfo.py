"""Read the host for ``doctor``: capabilities, sysctls, routes, conntrack, firewall.

Every function reads only (``/proc``, ``/sys``, ``ip -j route get``,
``iptables-save``, ``nft -j list ruleset``) or opens a socket briefly; none
changes the host.  Firewall rules are judged by ``io.firewall`` helpers below:
a rule that certainly matches the probe packet is reported as a drop, one that
may match (conditions this reader does not evaluate) as a possible drop.
"""

from __future__ import annotations

import ipaddress
import json
import operator
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

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


# -- firewall -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """The packet doctor asks about: TCP from ``src`` to ``dst``:``dport`` out of ``oif``."""

    src: str
    dst: str
    dport: int
    oif: str | None = None


@dataclass(frozen=True)
class FirewallHit:
    certain: bool  # False: the rule has conditions this reader cannot evaluate
    source: str  # "iptables" or "nft"
    where: str  # table/chain
    rule: str  # the rule as the tool prints it
    fix: str  # the exact command that removes it


def _in_net(addr: str, spec: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(spec, strict=False)
    except ValueError:
        return False


def iptables_backend() -> str | None:
    """``nf_tables``, ``legacy`` or None when iptables is not installed."""
    if not shutil.which("iptables"):
        return None
    try:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "nf_tables" if "nf_tables" in out.stdout else "legacy"


def iptables_save() -> str | None:
    if not shutil.which("iptables-save"):
        return None
    try:
        res = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def nft_ruleset() -> dict[str, Any] | None:
    if not shutil.which("nft"):
        return None
    try:
        res = subprocess.run(
            ["nft", "-j", "list", "ruleset"], capture_output=True, text=True, timeout=10
        )
        return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


# iptables-save: the chains a locally sent packet crosses, per table
_IPT_CHAINS = {
    "raw": ("OUTPUT",),
    "mangle": ("OUTPUT", "POSTROUTING"),
    "filter": ("OUTPUT",),
    "security": ("OUTPUT",),
}
_DROP = ("DROP", "REJECT")
YES, NO, MAYBE = 2, 0, 1


def _port_match(port: int, spec: str) -> bool:
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        if lo.isdigit() and (port == int(lo) if not hi else int(lo) <= port <= int(hi or 65535)):
            return True
    return False


def _ipt_rule_match(tokens: list[str], p: Probe) -> int:
    """YES/NO/MAYBE: does an iptables rule's condition hold for ``p``?"""
    result = YES
    i, neg = 0, False
    while i < len(tokens):
        t = tokens[i]
        arg = tokens[i + 1] if i + 1 < len(tokens) else ""
        if t == "!":
            neg, i = True, i + 1
            continue
        if t in ("-j", "-g", "--jump", "--goto"):
            break
        m: int | None = None
        step = 2
        if t in ("-d", "--destination"):
            m = YES if any(_in_net(p.dst, a) for a in arg.split(",")) else NO
        elif t in ("-s", "--source"):
            m = YES if any(_in_net(p.src, a) for a in arg.split(",")) else NO
        elif t in ("-p", "--protocol"):
            m = YES if arg.lower() in ("tcp", "6", "all", "0") else NO
        elif t in ("-o", "--out-interface"):
            if p.oif is None:
                m = MAYBE
            else:
                m = (
                    YES
                    if (p.oif.startswith(arg[:-1]) if arg.endswith("+") else p.oif == arg)
                    else NO
                )
        elif t in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            m = YES if _port_match(p.dport, arg) else NO
        elif t == "--syn":
            m, step = YES, 1
        elif t in ("-m", "--match", "--comment", "-c", "--set-counters"):
            m = None  # no condition of its own
            step = 3 if t in ("-c", "--set-counters") else 2
        else:
            m, step = MAYBE, 1
            while i + step < len(tokens) and not tokens[i + step].startswith("-"):
                step += 1
        if m is not None and neg and m != MAYBE:
            m = YES if m == NO else NO
        neg = False
        if m is not None:
            result = min(result, m)
        if result == NO:
            return NO
        i += step
    return result


def iptables_drops(saved: str, p: Probe) -> list[FirewallHit]:
    import shlex

    tables: dict[str, tuple[dict[str, str], dict[str, list[list[str]]]]] = {}
    table = ""
    for line in saved.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            tables[table] = ({}, {})
        elif line.startswith(":") and table:
            name, policy = line[1:].split()[:2]
            tables[table][0][name] = policy
            tables[table][1].setdefault(name, [])
        elif line.startswith("-A ") and table:
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            tables[table][1].setdefault(tokens[1], []).append(tokens)
    hits: list[FirewallHit] = []

    def walk(tname: str, chain: str, depth: int, cond: int) -> str | None:
        """Returns "accept"/"drop" when decided, None to fall through."""
        for tokens in tables[tname][1].get(chain, []):
            m = min(_ipt_rule_match(tokens[2:], p), cond)
            if m == NO:
                continue
            target = ""
            for j, tok in enumerate(tokens):
                if tok in ("-j", "-g", "--jump", "--goto") and j + 1 < len(tokens):
                    target = tokens[j + 1]
            rule = " ".join(shlex.quote(t) for t in tokens)
            if target in _DROP:
                fix = f"iptables -t {tname} -D {rule[3:]}"
                hits.append(FirewallHit(m == YES, "iptables", f"{tname} {chain}", rule, fix))
                if m == YES:
                    return "drop"
            elif target == "ACCEPT" and m == YES:
                return "accept"
            elif target == "RETURN" and m == YES:
                return None
            elif target in tables[tname][1] and depth < 16:
                verdict = walk(tname, target, depth + 1, m)
                if verdict is not None and m == YES:
                    return verdict
        return None

    for tname, chains in _IPT_CHAINS.items():
        if tname not in tables:
            continue
        for chain in chains:
            if walk(tname, chain, 0, YES) is None and tables[tname][0].get(chain) == "DROP":
                fix = (
                    f"iptables -t {tname} -I {chain} -d {p.dst} -p tcp --dport {p.dport} -j ACCEPT"
                )
                hits.append(FirewallHit(True, "iptables", f"{tname} {chain}", "policy DROP", fix))
    return hits


def _nft_value(left: Any, p: Probe) -> Any:
    if isinstance(left, dict):
        if "payload" in left:
            pl = left["payload"]
            key = (pl.get("protocol"), pl.get("field"))
            return {
                ("ip", "daddr"): p.dst, ("ip", "saddr"): p.src, ("tcp", "dport"): p.dport,
                ("ip", "protocol"): "tcp", ("th", "dport"): p.dport,
            }.get(key, MAYBE)  # fmt: skip
        if "meta" in left:
            key = left["meta"].get("key")
            if key == "l4proto":
                return "tcp"
            if key == "nfproto":
                return "ipv4"
            if key in ("oifname", "oif"):
                return p.oif if p.oif else MAYBE
    return MAYBE


def _nft_in(v: Any, right: Any) -> int:
    if isinstance(right, dict):
        if "set" in right:
            return max((_nft_in(v, e) for e in right["set"]), default=NO)
        if "prefix" in right:
            pre = right["prefix"]
            return YES if _in_net(str(v), f"{pre['addr']}/{pre['len']}") else NO
        if "range" in right:
            lo, hi = right["range"]
            if isinstance(v, int):
                return YES if lo <= v <= hi else NO
            try:
                a = int(ipaddress.ip_address(v))
                return (
                    YES
                    if int(ipaddress.ip_address(lo)) <= a <= int(ipaddress.ip_address(hi))
                    else NO
                )
            except ValueError:
                return MAYBE
        return MAYBE
    if isinstance(right, list):
        return max((_nft_in(v, e) for e in right), default=NO)
    if isinstance(right, str) and right.startswith("@"):
        return MAYBE  # named set: not expanded here
    if isinstance(v, int) and isinstance(right, str) and right.isdigit():
        right = int(right)
    return YES if v == right or str(v) == str(right) else NO


def _nft_render(exprs: list[Any]) -> str:
    parts = []
    for e in exprs:
        if "match" in e:
            m = e["match"]
            left, right = m.get("left"), m.get("right")
            if isinstance(left, dict) and "payload" in left:
                ltxt = f"{left['payload'].get('protocol')} {left['payload'].get('field')}"
            elif isinstance(left, dict) and "meta" in left:
                ltxt = f"meta {left['meta'].get('key')}"
            else:
                ltxt = json.dumps(left)
            op = m.get("op", "==")
            parts.append(f"{ltxt} {'' if op in ('==', 'in') else op + ' '}{json.dumps(right)}")
        else:
            parts.extend(k for k in e)
    return " ".join(parts)


def nft_drops(
    ruleset: dict[str, Any], p: Probe, skip_ip_tables: set[str] | frozenset[str] = frozenset()
) -> list[FirewallHit]:
    items = ruleset.get("nftables", [])
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for it in items:
        if "chain" in it:
            c = it["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in it:
            r = it["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    hits: list[FirewallHit] = []

    def walk(key: tuple[str, str, str], depth: int, cond: int) -> str | None:
        for r in rules.get(key, []):
            m = cond
            verdict = None
            for e in r.get("expr", []):
                if "match" in e:
                    mt = e["match"]
                    v = _nft_value(mt.get("left"), p)
                    res = MAYBE if v == MAYBE else _nft_in(v, mt.get("right"))
                    if mt.get("op") == "!=" and res != MAYBE:
                        res = NO if res == YES else YES
                    m = min(m, res)
                elif any(k in e for k in ("drop", "reject", "accept", "return", "jump", "goto")):
                    verdict = next(iter(e))
                    target = e[verdict].get("target") if isinstance(e[verdict], dict) else None
                    break
                elif not any(k in e for k in ("counter", "log", "limit", "notrack", "meta")):
                    m = min(m, MAYBE)
            if m == NO or verdict is None:
                continue
            fam, tab, ch = key
            if verdict in ("drop", "reject"):
                fix = f"nft delete rule {fam} {tab} {ch} handle {r.get('handle')}"
                text = _nft_render(r.get("expr", []))
                hits.append(FirewallHit(m == YES, "nft", f"{fam} {tab} {ch}", text, fix))
                if m == YES:
                    return "drop"
            elif verdict == "accept" and m == YES:
                return "accept"
            elif verdict == "return" and m == YES:
                return None
            elif verdict in ("jump", "goto") and target and depth < 16:
                sub = walk((fam, tab, target), depth + 1, m)
                if sub is not None and m == YES:
                    return sub
        return None

    for key, c in chains.items():
        fam, tab, name = key
        if c.get("hook") not in ("output", "postrouting") or fam not in ("ip", "inet"):
            continue
        if fam == "ip" and tab in skip_ip_tables:
            continue
        if walk(key, 0, YES) is None and c.get("policy") == "drop":
            fix = f"nft chain {fam} {tab} {name} '{{ policy accept; }}'"
            hits.append(FirewallHit(True, "nft", f"{fam} {tab} {name}", "policy drop", fix))
    return hits


def firewall_drops(probe: Probe) -> list[FirewallHit]:
    """Rules in the OUTPUT path that would drop ``probe`` (raw packets go through it)."""
    hits: list[FirewallHit] = []
    backend = iptables_backend()
    saved = iptables_save()
    if saved:
        hits += iptables_drops(saved, probe)
    ruleset = nft_ruleset()
    if ruleset:
        skip = {"filter", "raw", "mangle", "nat", "security"} if backend == "nf_tables" else set()
        hits += nft_drops(ruleset, probe, skip_ip_tables=skip)
    return hits
