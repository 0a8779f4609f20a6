"""Added latency, as netem would add it on the clients' path (issue 12, sans-IO).

``--delay SPEC`` holds every captured packet for a while before the session
engine sees it, so everything the engine sends towards the target leaves
that much later than the online server received it:

* ``50ms`` (also ``0.05s``, ``500us``): a fixed delay;
* ``50ms:10ms``: a delay with jitter, uniform in [50 - 10, 50 + 10] ms, as
  netem's default distribution;
* ``rtt``: each real client's own round-trip time, measured from its
  captured handshake (SYN to the client's ACK of the SYN-ACK).  A flow's SYN
  is held until that ACK is captured, so the SYN itself leaves one RTT late
  too; flows whose handshake was not captured get the median of the RTTs
  measured so far (0 before the first), a SYN whose ACK never comes within
  ``rtt_wait`` is released with the median.

Delaying the input rather than the engine's output keeps the engine's own
timers (retransmission, establishment, the brake's SYN-ACK wait) true to
the target's real round trip, and a request that waits for the delayed
handshake is not delayed twice.  Packets of one flow keep their order (a
jittered packet never overtakes an earlier one).  Packets are grouped per
flow by ``(tag, addresses, ports)``; ``tag`` is the caller's (offline
replay passes the round).
"""

from __future__ import annotations

import heapq
import random
import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Deque, List, Optional, Tuple

SYN, ACK = 0x02, 0x10
MAX_DELAY = 60.0
MAX_FLOWS = 1 << 16  # rtt mode: RTTs remembered for this many recent flows
MEDIAN_SAMPLES = 1001

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(s|ms|us)\s*$")


@dataclass(frozen=True)
class DelaySpec:
    base: float = 0.0    # seconds
    jitter: float = 0.0  # seconds, uniform +-
    rtt: bool = False

    def upper_bound(self) -> float:
        """The most a packet is held in fixed/jitter mode (unknown for rtt)."""
        return self.base + self.jitter


def _duration(text: str) -> float:
    m = _TIME.match(text)
    if not m:
        raise ValueError("%r is not a duration: give a number and a unit (50ms, 0.05s, 500us)"
                         % text)
    v = float(m.group(1)) * _UNITS[m.group(2)]
    if v > MAX_DELAY:
        raise ValueError("%r is more than %d s" % (text, MAX_DELAY))
    return v


def parse_delay(text: str) -> DelaySpec:
    """``50ms``, ``50ms:10ms`` or ``rtt``; ValueError naming the problem otherwise."""
    t = text.strip().lower()
    if t == "rtt":
        return DelaySpec(rtt=True)
    base_s, sep, jit_s = t.partition(":")
    base = _duration(base_s)
    jitter = _duration(jit_s) if sep else 0.0
    if jitter > base:
        raise ValueError("jitter %s is larger than the delay %s" % (jit_s, base_s))
    return DelaySpec(base, jitter)


def flow_key(pkt: Any) -> bytes:
    """Addresses and ports of an IPv4 packet (whatever is there if it is short)."""
    ihl = (pkt[0] & 0x0F) * 4 if len(pkt) else 0
    return bytes(pkt[12:20]) + bytes(pkt[ihl:ihl + 4])


def _tcp_flags_seq(pkt: Any) -> Tuple[int, int]:
    ihl = (pkt[0] & 0x0F) * 4
    if len(pkt) < ihl + 14 or pkt[9] != 6:
        return 0, 0
    return pkt[ihl + 13], int.from_bytes(pkt[ihl + 4:ihl + 8], "big")


class _Flow:
    __slots__ = ("last", "held", "rtt", "syn_at", "isn", "waiting")

    def __init__(self) -> None:
        self.last = 0.0       # release time of the flow's latest packet
        self.held = 0         # packets of the flow in the heap
        self.rtt: Optional[float] = None
        self.syn_at: Optional[float] = None
        self.isn = 0
        self.waiting: Optional[List[Tuple[float, Any, bytes]]] = None  # rtt: until the ACK


class DelayLine:
    def __init__(self, spec: DelaySpec, rng: Optional[random.Random] = None,
                 rtt_wait: float = 3.0) -> None:
        self.spec = spec
        self.rng = rng or random.Random()
        self.rtt_wait = rtt_wait
        self.flows: "OrderedDict[Tuple[Any, bytes], _Flow]" = OrderedDict()
        self._heap: List[Tuple[float, int, Any, Tuple[Any, bytes], bytes]] = []
        self._seq = 0
        self._samples: Deque[float] = deque(maxlen=MEDIAN_SAMPLES)
        self._median: Optional[float] = None
        self._waiting: "OrderedDict[Tuple[Any, bytes], float]" = OrderedDict()  # rtt: SYN times
        self.held = 0
        self.rtt_measured = 0
        self.rtt_median_used = 0

    # ------------------------------------------------------------ input

    def push(self, pkt: bytes, now: float, tag: Any = None) -> None:
        key = (tag, flow_key(pkt))
        f = self.flows.get(key)
        if f is None:
            f = self.flows[key] = _Flow()
        self.held += 1
        spec = self.spec
        if not spec.rtt:
            d = spec.base
            if spec.jitter:
                d += self.rng.uniform(-spec.jitter, spec.jitter)
            self._schedule(key, f, now + d, tag, pkt)
            return
        self.flows.move_to_end(key)
        if f.waiting is not None:  # the SYN is held until the handshake's ACK
            flags, seq = _tcp_flags_seq(pkt)
            f.waiting.append((now, tag, pkt))
            if flags & ACK and not flags & SYN and seq == (f.isn + 1) & 0xFFFFFFFF:
                assert f.syn_at is not None
                self._resolve(key, f, max(now - f.syn_at, 0.0), True)
            return
        if f.rtt is None:
            flags, seq = _tcp_flags_seq(pkt)
            if flags & SYN and not flags & ACK:
                f.syn_at, f.isn, f.waiting = now, seq, [(now, tag, pkt)]
                self._waiting[key] = now
                return
            f.rtt = self.median()
            self.rtt_median_used += 1
        self._schedule(key, f, now + f.rtt, tag, pkt)
        self._trim()

    def _schedule(self, key: Tuple[Any, bytes], f: _Flow, at: float, tag: Any, pkt: bytes) -> None:
        if at < f.last:
            at = f.last  # never overtake the flow's previous packet
        f.last = at
        f.held += 1
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, tag, key, pkt))

    def _resolve(self, key: Tuple[Any, bytes], f: _Flow, rtt: float, measured: bool) -> None:
        f.rtt = rtt
        if measured:
            self._samples.append(rtt)
            self._median = None
            self.rtt_measured += 1
        else:
            self.rtt_median_used += 1
        waiting, f.waiting = f.waiting or [], None
        self._waiting.pop(key, None)
        for t, tag, pkt in waiting:
            self._schedule(key, f, t + rtt, tag, pkt)

    def median(self) -> float:
        if self._median is None:
            s = sorted(self._samples)
            n = len(s)
            self._median = 0.0 if not n else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)
        return self._median

    def _trim(self) -> None:
        flows = self.flows
        while len(flows) > MAX_FLOWS:
            key, f = next(iter(flows.items()))
            if f.held or f.waiting is not None:
                flows.move_to_end(key)  # still in use: keep it
                break
            del flows[key]

    # ------------------------------------------------------------ output

    def next_deadline(self) -> Optional[float]:
        d = self._heap[0][0] if self._heap else None
        if self._waiting:
            w = next(iter(self._waiting.values())) + self.rtt_wait
            if d is None or w < d:
                d = w
        return d

    def due(self, now: float) -> List[Tuple[Any, bytes]]:
        """(tag, packet) of every packet whose time has come, in release order."""
        if self._waiting:
            while self._waiting:
                key, t = next(iter(self._waiting.items()))
                if t + self.rtt_wait > now:  # the same sum as next_deadline()
                    break
                f = self.flows[key]
                self._resolve(key, f, self.median(), False)
        out = []
        heap = self._heap
        fixed = not self.spec.rtt
        while heap and heap[0][0] <= now:
            _at, _s, tag, key, pkt = heapq.heappop(heap)
            out.append((tag, pkt))
            self.held -= 1
            g = self.flows.get(key)
            if g is not None:
                g.held -= 1
                if fixed and not g.held:
                    del self.flows[key]
        return out
