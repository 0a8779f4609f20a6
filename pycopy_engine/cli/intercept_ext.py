"""intercept's side of the pycopy extension (wire/control_ext.py): the whole
answer payloads of the sessions a ``--compare`` tcpcopy registered.

The 1.0 path is untouched: records still come from the 128-byte capture.  Only
while at least one connected tcpcopy asked for answers, a second capture runs
with the full snap length and a filter that keeps only the segments of the
``-F`` filter that carry payload; each goes, as a payload item, to the tcpcopy
connection its route belongs to, if that connection asked.  A tcpcopy that
did not ask (every C tcpcopy) never sees an extension frame.
"""

from __future__ import annotations

from typing import Any, Dict, List

from ..io import bpf
from ..io.capture import open_packet_capture
from ..io.channel import Peer
from ..wire.control_ext import CAP_ANSWERS, ITEM, encode_accept, payload_frames

PAYLOAD_SNAPLEN = 65535
PAYLOAD_ONLY = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0"


class AnswerPayloads:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.peers: Dict[Peer, int] = {}  # peer -> capabilities granted
        self.capture: Any = None
        self._prog: Any = None
        self.pending: Dict[Peer, List[bytes]] = {}

    def negotiate(self, peer: Peer, asked: int) -> None:
        caps = asked & CAP_ANSWERS
        c = self.app.stats.c
        c["ext_requests"] += 1
        self.peers[peer] = caps
        peer.write(encode_accept(caps))
        self.app.log.info("tcpcopy %s uses the pycopy extension (asked 0x%x, granted 0x%x)",
                          peer.name, asked, caps)
        if caps & CAP_ANSWERS and self.capture is None:
            self._open()

    def _open(self) -> None:
        app = self.app
        if self._prog is None:
            self._prog = bpf.compile_filter("(%s) and %s" % (app.args.filter, PAYLOAD_ONLY),
                                            bpf.DLT_RAW)
        ifaces = [i for i in (app.args.iface or "").split(",") if i] or None
        # the answers come in from the target: frames this host sends (the control
        # links, now carrying payloads) are left out before any filter runs
        self.capture = open_packet_capture(ifaces, self._prog, snaplen=PAYLOAD_SNAPLEN,
                                           ignore_outgoing=True)
        app.loop.add_reader(self.capture.fileno(), self._on_capture)
        app.log.info("capturing whole answers for --compare")

    def drop(self, peer: Peer) -> None:
        self.peers.pop(peer, None)
        self.pending.pop(peer, None)
        if self.capture is not None and not any(v & CAP_ANSWERS for v in self.peers.values()):
            self.close()
            self.app.log.info("no tcpcopy asks for answers any more: whole-answer capture stopped")

    def close(self) -> None:
        if self.capture is not None:
            self.app.loop.remove_reader(self.capture.fileno())
            self.capture.close()
            self.capture = None

    def _on_capture(self) -> None:
        app = self.app
        c = app.stats.c
        routes = app.router.routes
        peers = self.peers
        pending = self.pending
        rewrite = app.rewrite
        pack = ITEM.pack

        def handle(pkt) -> None:
            try:
                ihl = (pkt[0] & 0x0F) << 2
                if pkt[0] >> 4 != 4 or pkt[9] != 6:
                    return
                t = ihl
                doff = (pkt[t + 12] >> 4) << 2
                end = (pkt[2] << 8) | pkt[3]
                data = bytes(pkt[t + doff:end])
                if not data:
                    return
                dst = bytes(pkt[16:20])
                if rewrite is not None and dst == rewrite[0]:
                    dst = rewrite[1]
                cport = (pkt[t + 2] << 8) | pkt[t + 3]
                tip = bytes(pkt[12:16])
                tport = (pkt[t] << 8) | pkt[t + 1]
                entry = routes.get((dst, cport, tip, tport))
                if entry is None or entry[0] not in peers:
                    return
                item = pack(dst, cport, tip, tport, int.from_bytes(pkt[t + 4:t + 8], "big"),
                            int.from_bytes(pkt[t + 8:t + 12], "big"), pkt[t + 13], len(data))
            except (IndexError, ValueError):
                c["drop:ext_malformed"] += 1
                return
            pending.setdefault(entry[0], []).extend((item, data))

        self.capture.read_batch(handle)
        if not pending:
            return
        for peer, parts in pending.items():
            items = [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)]
            # each frame is written whole or not at all (the peer's bounded buffer)
            ok = [peer.write(frame) for frame in payload_frames(items)]
            if all(ok):
                c["ext_items_sent"] += len(items)
            else:
                c["drop:ext_peer_slow"] += len(items)  # (some of them, at least)
        pending.clear()
