"""Address mapping of replayed sessions: -x maps, -c/-H client rewriting, -f/-n
port allocation without colliding 4-tuples, and -r/-g session sampling.

Everything here is pure: randomness comes from a ``random.Random`` passed in,
time from the caller.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .portpool import worker_port

Key = Tuple[bytes, int, bytes, int]  # (client ip, client port, target ip, target port)

LOCALHOST = bytes((127, 0, 0, 1))
PORT_MIN = 1024
LINEAR_PROBES = 8    # a taken port: try the next ones ...
RANDOM_PROBES = 64   # ... then random ones, then scan them all before calling it exhausted
MAX_IP_SLOTS = 16384  # -c: original client IPs remembered round-robin; the rest are hashed
RAND_SPAN = 512  # R of -f/-n: random per process in [0, 512), as in C
RESTART_SALT_SPAN = 1536  # start salts: RAND_SPAN .. 2047, inside one -f band of 2048 ports


@dataclass(frozen=True)
class TargetMap:
    """One ``-x`` entry: [online_ip:]online_port-target_ip:target_port."""

    online_ip: Optional[bytes]
    online_port: int
    target_ip: bytes
    target_port: int


def find_map(maps: Sequence[TargetMap], dst: bytes, dport: int) -> Optional[TargetMap]:
    """The first map whose online address matches a captured packet's destination."""
    for m in maps:
        if m.online_port == dport and (m.online_ip is None or m.online_ip == dst):
            return m
    return None


def find_maps(maps: Sequence[TargetMap], dst: bytes, dport: int) -> List[TargetMap]:
    """``--tee``: every map whose online address matches, in ``-x`` order, one per target."""
    out: List[TargetMap] = []
    seen = set()
    for m in maps:
        if m.online_port == dport and (m.online_ip is None or m.online_ip == dst):
            t = (m.target_ip, m.target_port)
            if t not in seen:
                seen.add(t)
                out.append(m)
    return out


def wrap_port(port: int) -> int:
    """Fold a shifted port back into 1024..65535 (C wraps to 1024 + overflow)."""
    if port <= 0xFFFF:
        return port
    return PORT_MIN + (port - PORT_MIN) % (0x10000 - PORT_MIN)


def restart_port_salt(start: float) -> int:
    """The start salt of a tcpcopy process started at ``start`` (Unix seconds).

    Sessions picked up mid-stream (no SYN captured: the connection is older
    than this process) use it in place of the random R of -f/-n, and copy 0
    is shifted by it even without -f, because the previous tcpcopy may have
    left that very 4-tuple open on the target when it was killed.  It is in
    512..2047: above every R (so never the offset a SYN-captured flow had),
    inside one -f band (copy 0 keeps its -f band), and two starts at least
    1 s and less than 1,536 s (25.6 min) apart always get different salts;
    nothing is stored.
    """
    return RAND_SPAN + int(start) % RESTART_SALT_SPAN


class PortExhausted(Exception):
    """Every client port of one (client ip, target) pair is held by a live session."""


class AddressMapper:
    """Chooses the (client ip, client port) the target sees for each replayed copy.

    * ``-c``: each original client IP is bound, round-robin and for the life of
      the process, to one address of the list (copy *i* uses the next ones);
      beyond ``MAX_IP_SLOTS`` original IPs, by a hash of the IP (as stable, and
      the map's memory stays bounded).
    * ``-H``: a captured 127.0.0.1 source becomes this address.
    * ``-f``: every port is shifted by ``(f << 11) + R``; ``-n``: copy *i* is
      shifted by a further ``(2i - 1) * 32``, R being random per process.
    * A flow older than the process (picked up mid-stream) uses the start
      salt in place of R, and copy 0 is shifted by it even without ``-f``
      (``restart_port_salt``): a restarted tcpcopy keeps clear of the
      4-tuples its predecessor may have left open on the target.
    * The chosen 4-tuple is checked against live sessions (``in_use``) and
      moved to the next free port if taken; each such move is counted by the
      caller as an avoided collision.  When no port is free (one NAT'd client,
      or one ``-c`` address, under load) ``allocate`` raises ``PortExhausted``
      and the caller skips that copy.
    """

    def __init__(self, clt_ips: Sequence[bytes] = (), localhost_ip: Optional[bytes] = None,
                 port_shift: int = 0, rng: Optional[random.Random] = None,
                 worker: Tuple[int, int] = (0, 1)) -> None:
        self.clt_ips = list(clt_ips)
        self.localhost_ip = localhost_ip
        rng = rng or random.Random()
        self.rng = rng
        self.rand = rng.randrange(RAND_SPAN)
        self.band = port_shift << 11
        self.shift = self.band + self.rand if port_shift else 0
        self._ip_slot: Dict[bytes, int] = {}
        # --workers: (index, count): every port this mapper hands out is in
        # the worker's class (portpool.worker_port), so workers never collide
        self.w_index, self.w_count = worker

    def client_ip(self, orig_ip: bytes, copy: int = 0) -> bytes:
        if self.clt_ips:
            slot = self._ip_slot.get(orig_ip)
            if slot is None:
                if len(self._ip_slot) < MAX_IP_SLOTS:
                    slot = self._ip_slot[orig_ip] = len(self._ip_slot) % len(self.clt_ips)
                else:  # bounded memory (a flood of spoofed sources): a stable hash instead
                    slot = zlib.crc32(orig_ip) % len(self.clt_ips)
            return self.clt_ips[(slot + copy) % len(self.clt_ips)]
        if orig_ip == LOCALHOST and self.localhost_ip is not None:
            return self.localhost_ip
        return orig_ip

    def preferred_port(self, orig_port: int, copy: int, salt: int = 0,
                       restart_salt: int = 0) -> int:
        """``restart_salt``: a flow older than this process (mid-stream): the
        start salt replaces R, and shifts copy 0 even without -f."""
        if restart_salt:
            rand = restart_salt
            port = orig_port + self.band + rand + salt
        else:
            rand = self.rand
            port = orig_port + self.shift + salt
        if copy:
            port += (2 * copy - 1) * 32 + rand
        port = wrap_port(port)
        if self.w_count > 1:
            return worker_port(port, self.w_index, self.w_count)
        return port

    def allocate(self, orig_ip: bytes, orig_port: int, copy: int, target_ip: bytes,
                 target_port: int, in_use: Callable[[Key], bool],
                 salt: int = 0, restart_salt: int = 0,
                 ip_copy: Optional[int] = None) -> Tuple[Key, int]:
        """(key the target will see, number of occupied ports skipped).

        ``ip_copy``: the copy number that picks the ``-c`` address, when it is
        not ``copy`` (``--tee``: every target sees the same address for a
        session's copy *i*, while the port is shifted by the global copy number).
        Raises ``PortExhausted`` when every port of that client address is taken."""
        ip = self.client_ip(orig_ip, copy if ip_copy is None else ip_copy)
        port = self.preferred_port(orig_port, copy, salt, restart_salt)
        key = (ip, port, target_ip, target_port)
        if not in_use(key):
            return key, 0
        # Taken: the next few ports, then random ones (a linear walk through a
        # block of busy ports -- sequential NAT ports, -n copies -- would cost
        # O(n) per session), then, before giving up, every port once.
        skipped = 1
        step, first = self.w_count, PORT_MIN + self.w_index  # the worker's class
        for i in range(LINEAR_PROBES + RANDOM_PROBES):
            if i < LINEAR_PROBES:
                port = port + step if port + step <= 0xFFFF else first
            else:
                port = first + step * self.rng.randrange((0x10000 - first + step - 1) // step)
            key = (ip, port, target_ip, target_port)
            if not in_use(key):
                return key, skipped
            skipped += 1
        for port in range(first, 0x10000, step):
            key = (ip, port, target_ip, target_port)
            if not in_use(key):
                return key, skipped
            skipped += 1
        raise PortExhausted(skipped)


class Sampler:
    """``-r``/``-g``: keep a session or not, the same answer for every packet of it."""

    def __init__(self, percent: int = 100, gradual: bool = False) -> None:
        if percent <= 0 or percent >= 100:
            percent = 100
        self.percent = percent
        self.gradual = gradual
        self.first: Optional[float] = None

    def keep(self, src: bytes, sport: int, now: float) -> bool:
        pct = self.percent
        if self.gradual:
            if self.first is None:
                self.first = now
            pct = min(pct, int(now - self.first) + 1)
        if pct >= 100:
            return True
        return zlib.crc32(src + sport.to_bytes(2, "big")) % 100 < pct


def parse_ip(text: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(text).packed


def parse_ipv4(text: str) -> bytes:
    """A dotted IPv4 address; anything else (IPv6 included) is a ValueError."""
    import ipaddress

    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        if ":" in text:
            raise ValueError("%r is not an IPv4 address (IPv6 is not supported)" % text) from None
        raise ValueError("%r is not an IPv4 address" % text) from None


def expand_clt_ips(spec: str, target_ips: Sequence[bytes] = ()) -> List[bytes]:
    """``-c`` value: a comma list of IPs, where ``a.b.c.x`` means .1-.254.

    Addresses equal to a target IP are skipped, as in C; at most 4096.
    """
    out: List[bytes] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if item.endswith(".x"):
            base = item[:-2]
            if base.count(".") != 2:
                raise ValueError("%r: a.b.c.x needs three IPv4 octets before .x" % item)
            out.extend(parse_ipv4("%s.%d" % (base, i)) for i in range(1, 255))
        else:
            out.append(parse_ipv4(item))
    out = [ip for ip in out if ip not in target_ips]
    if len(out) > 4096:
        raise ValueError("more than 4096 client addresses")
    return out
