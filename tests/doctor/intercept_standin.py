"""A minimal, real intercept for doctor's end-to-end probe test.

Used only while ``pycopy_engine.cli.intercept`` does not exist.  It speaks the
C protocol (hello, CLIENT_ADD, combined 64-byte records), captures with an
AF_PACKET socket and the given pcap filter, and forwards records only for
registered 4-tuples (SYN/RST records that beat their CLIENT_ADD wait 5 s).

    python tests/doctor/intercept_standin.py -i eth0 -F 'tcp and src port 80' [-p 36524]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from pycopy_engine.io.bpf import attach_filter, compile_filter  # noqa: E402
from pycopy_engine.wire import control  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-i", required=True)
    ap.add_argument("-F", required=True)
    ap.add_argument("-p", type=int, default=control.DEFAULT_PORT)
    args = ap.parse_args()
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    attach_filter(cap, compile_filter(args.F))
    cap.bind((args.i, 0x0800))
    lsn = socket.socket()
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind(("0.0.0.0", args.p))
    lsn.listen(5)
    print("listening", flush=True)
    decoders: dict[socket.socket, control.ClientMsgDecoder] = {}
    routes: dict[tuple[bytes, int, bytes, int], socket.socket] = {}
    delayed: list[tuple[float, tuple[bytes, int, bytes, int], bytes]] = []
    while True:
        r, _, _ = select.select([lsn, cap, *decoders], [], [], 0.5)
        for s in r:
            if s is lsn:
                c, _ = lsn.accept()
                decoders[c] = control.ClientMsgDecoder()
            elif s is cap:
                pkt = cap.recv(65535)
                if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
                    continue
                rec = control.make_record(pkt)
                key = control.record_key(rec)
                conn = routes.get(key)
                if conn is not None:
                    conn.sendall(control.encode_frame([rec]))
                elif rec[33] & 0x06:
                    delayed.append((time.monotonic() + 5, key, rec))
            else:
                data = s.recv(4096)
                if not data:
                    decoders.pop(s).feed(b"")
                    s.close()
                    for k in [k for k, v in routes.items() if v is s]:
                        del routes[k]
                    continue
                for msg in decoders[s].feed(data):
                    if msg.type == control.MSG_CLIENT_ADD and msg.clt_ip != b"\0\0\0\0":
                        key = (msg.clt_ip, msg.clt_port, msg.target_ip, msg.target_port)
                        routes[key] = s
                        for item in [d for d in delayed if d[1] == key]:
                            delayed.remove(item)
                            s.sendall(control.encode_frame([item[2]]))
        now = time.monotonic()
        delayed[:] = [d for d in delayed if d[0] > now]


if __name__ == "__main__":
    main()
