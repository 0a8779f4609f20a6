"""Address filters for the preflight checks (standard library only).

addr | preflight_ipv4                 -> True for a dotted-quad IPv4 address
item | preflight_network              -> "a.b.c.d/len" for an address or CIDR, "" if invalid
nets | preflight_documentation        -> the entries that overlap RFC 5737 networks
what | preflight_covered_by(nets)     -> True when every address of `what` is in one of nets
spec | preflight_client_range         -> the networks a tcpcopy -c value rewrites clients to
"""

from __future__ import annotations

import ipaddress
from typing import Any

# RFC 5737 documentation networks: placeholders, never real clients or hosts.
DOCUMENTATION = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)


def _network(value: Any) -> ipaddress.IPv4Network | None:
    text = str(value).strip()
    if not text or text.count(".") != 3:
        return None
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        return None


def preflight_ipv4(value: Any) -> bool:
    text = str(value).strip()
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return text.count(".") == 3


def preflight_network(value: Any) -> str:
    net = _network(value)
    return str(net) if net is not None else ""


def preflight_documentation(values: Any) -> list[str]:
    if isinstance(values, str):
        values = [values]
    out = []
    for item in values or []:
        net = _network(item)
        if net is not None and any(net.overlaps(doc) for doc in DOCUMENTATION):
            out.append(str(item))
    return out


def preflight_client_range(spec: Any) -> list[str]:
    """tcpcopy -c: "a.b.c.x" (the /24) or "ip[,ip...]"; invalid parts are kept as given."""
    out = []
    for part in str(spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        if part.endswith(".x"):
            candidate = part[:-2] + ".0/24"
        else:
            candidate = part
        net = _network(candidate)
        out.append(str(net) if net is not None else part)
    return out


def preflight_covered_by(values: Any, networks: Any) -> bool:
    if isinstance(values, str):
        values = [values]
    nets = [n for n in (_network(x) for x in networks or []) if n is not None]
    for item in values or []:
        net = _network(item)
        if net is None or not any(net.subnet_of(n) for n in nets):
            return False
    return True


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "preflight_ipv4": preflight_ipv4,
            "preflight_network": preflight_network,
            "preflight_documentation": preflight_documentation,
            "preflight_client_range": preflight_client_range,
            "preflight_covered_by": preflight_covered_by,
        }
