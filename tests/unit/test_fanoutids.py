"""The sock_diag dump of packet sockets' fanout groups, parsed from crafted
netlink messages (the lab test in tests/io/test_io_fanout_lab.py asks the
real kernel)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from pycopy_engine.io import fanoutids as f


def nlmsg(mtype: int, body: bytes) -> bytes:
    msg = struct.pack("=IHHII", 16 + len(body), mtype, 0, 1, 0) + body
    return msg + b"\0" * (-len(msg) % 4)


def rta(atype: int, data: bytes) -> bytes:
    a = struct.pack("=HH", 4 + len(data), atype) + data
    return a + b"\0" * (-len(a) % 4)


def sock_msg(ino: int, *attrs: bytes) -> bytes:
    return nlmsg(f.SOCK_DIAG_BY_FAMILY,
                 struct.pack("=BBHI8x", socket.AF_PACKET, 3, 0, ino) + b"".join(attrs))


def fanout(group: int, mode: int = 0x8000) -> bytes:
    return rta(f.PACKET_DIAG_FANOUT, struct.pack("=I", group | mode << 16))


def test_the_request_asks_for_every_packet_sockets_fanout():
    req = f.request(seq=7)
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, seq) == (len(req), 20, 7)
    assert flags == f.NLM_F_REQUEST | f.NLM_F_DUMP
    family, _proto, _pad, ino, show = struct.unpack_from("=BBHII", req, 16)
    assert (family, ino, show) == (socket.AF_PACKET, 0, f.PACKET_SHOW_FANOUT)


def test_ids_from_several_messages_and_odd_attributes():
    ids: set[int] = set()
    data = (sock_msg(1, rta(9, b"\1\2\3"), fanout(99))   # an unaligned attribute first
            + sock_msg(2)                                # a socket in no group
            + sock_msg(3, fanout(0x1234, 0x1000)))       # the mode bits are not the id
    assert f.parse(data, ids) is False  # no NLMSG_DONE yet: read on
    assert ids == {99, 0x1234}
    assert f.parse(nlmsg(f.NLMSG_DONE, struct.pack("=i", 0)), ids) is True


def test_a_netlink_error_is_an_oserror_naming_it():
    with pytest.raises(OSError, match="sock_diag of packet sockets") as exc:
        f.parse(nlmsg(f.NLMSG_ERROR, struct.pack("=i", -errno.ENOENT) + bytes(16)), set())
    assert exc.value.errno == errno.ENOENT


@pytest.mark.parametrize("data", [
    struct.pack("=IHHII", 200, 20, 0, 1, 0),  # longer than the read
    struct.pack("=IHHII", 8, 20, 0, 1, 0),    # shorter than its own header
], ids=["overlong", "short"])
def test_malformed_messages_are_refused_not_looped_on(data):
    with pytest.raises(ValueError, match="netlink message of length"):
        f.parse(data, set())


def test_a_malformed_attribute_is_refused():
    bad = nlmsg(f.SOCK_DIAG_BY_FAMILY,
                struct.pack("=BBHI8x", socket.AF_PACKET, 3, 0, 1) + struct.pack("=HH", 2, 4))
    with pytest.raises(ValueError, match="attribute"):
        f.parse(bad, set())


def test_choose_takes_the_first_free_id_and_wraps():
    assert f.choose_group(500, {1, 2}) == 500
    assert f.choose_group(500, {500, 501}) == 502
    assert f.choose_group(0xFFFF, {0xFFFF, 0}) == 1
    with pytest.raises(OSError, match="every PACKET_FANOUT group id is in use"):
        f.choose_group(3, range(0x10000))


def test_pick_falls_back_to_the_preferred_id_when_the_kernel_cannot_tell(monkeypatch):
    def refuse(timeout=2.0):
        raise OSError(errno.ENOENT, "sock_diag of packet sockets: No such file or directory")

    monkeypatch.setattr(f, "ids_in_use", refuse)
    group, note = f.pick_group(4242)
    assert group == 4242
    assert note.startswith("unchecked: the groups in use could not be listed")
