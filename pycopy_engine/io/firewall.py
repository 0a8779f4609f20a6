"""Would this host's firewall drop a packet doctor is about to send?

Reads the rules (``iptables-save``, ``nft -j list ruleset``; reads only) and
walks the chains a locally sent TCP packet crosses (OUTPUT, POSTROUTING) for
one :class:`Probe`.  A rule that certainly matches the probe packet is
reported as a drop (``FirewallHit.certain``), one that may match (conditions
this reader does not evaluate) as a possible drop; each hit carries the exact
command that removes it.  ``doctor`` reaches these through
:mod:`pycopy_engine.io.sysinfo`, which re-exports them.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any


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
