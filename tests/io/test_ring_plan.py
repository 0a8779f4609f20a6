"""Ring geometry (pure) and the kernel-drop warning (fake socket, fake clock)."""

from __future__ import annotations

import logging
import socket

import pytest

from pycopy_engine.io.capture_base import DROP_WARN_S, Capture
from pycopy_engine.io.ringplan import HOLD_S, MAX_TOV_MS, plan_v2, plan_v3


def test_v3_blocks_are_the_smallest_power_of_two_pages_that_fit_a_full_packet():
    p = plan_v3(65535, 64 << 20)
    assert p.block_size == 128 << 10  # 65535 + headers > 64 KB
    assert p.block_nr == 512
    assert p.ring_bytes == 64 << 20
    small = plan_v3(1500, 16 << 20)
    assert small.block_size == 4096 and small.block_nr == 4096


def test_v3_default_timer_makes_the_ring_hold_eight_seconds_below_its_byte_limit():
    p = plan_v3(65535, 64 << 20)
    assert p.tov_ms == 16  # 512 blocks x 16 ms >= 8 s
    assert p.block_nr * p.tov_ms / 1000.0 >= HOLD_S == 8.0
    # the old geometry (16 MB, 1 ms): 128 blocks, a quarter-second at moderate rates
    old = plan_v3(65535, 16 << 20, tov_ms=1)
    assert old.hold_seconds(35_000, 150) == pytest.approx(0.128)
    # the new default holds >= 7 s at the bench's keep-alive saturation (~35k packets/s),
    # all of HOLD_S at 25k
    assert p.hold_seconds(35_000, 150) > 7.0
    assert p.hold_seconds(25_000, 150) >= HOLD_S
    # above its byte limit the hold time falls with the rate
    assert p.hold_seconds(1_000_000, 150) < HOLD_S
    assert p.max_rate(150) == pytest.approx(p.hold_packets(150) / HOLD_S)


def test_v3_timer_is_bounded_and_explicit_values_win():
    tiny = plan_v3(65535, 1 << 20)  # 8 blocks: 1 s would be needed
    assert tiny.block_nr == 8 and tiny.tov_ms == MAX_TOV_MS
    assert tiny.hold_seconds(10_000, 150) < HOLD_S
    assert plan_v3(65535, 64 << 20, tov_ms=10).tov_ms == 10
    assert plan_v3(65535, 256 << 20).tov_ms == 4  # 2048 blocks: a shorter timer suffices
    assert plan_v3(65535, 64 << 20, block_size=256 << 10).block_nr == 256
    assert plan_v3(65535, 1).block_nr == 2  # never fewer than two blocks


def test_v3_slots_and_packets_per_block():
    p = plan_v3(65535, 64 << 20)
    assert p.slot_bytes(150) == 248  # 96 bytes of headers, aligned to 8
    assert p.hold_packets(150) == ((128 << 10) - 48) // 248 * 512


def test_v2_plan_keeps_the_previous_geometry():
    p = plan_v2(120, None)
    assert (p.frame_size, p.block_size) == (208, 128 << 10)
    assert p.ring_bytes == 16 << 20 and p.frame_nr == (128 << 10) // 208 * 128
    assert p.hold_seconds(10_000, 1000) == p.frame_nr / 10_000
    big = plan_v2(65535, None)
    assert (big.frame_size, big.block_size) == (65616, 69632)  # one page-rounded frame a block
    assert big.frame_nr == big.block_nr == (64 << 20) // 69632
    assert "TPACKET_V2" in p.describe() and "TPACKET_V3" in plan_v3(65535, 1 << 20).describe()


class FakeCapture(Capture):
    def __init__(self) -> None:
        super().__init__(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 100)
        self.kdrops = 0

    def kernel_stats(self) -> dict[str, int]:
        return {"packets": 0, "drops": self.kdrops, "truncated": 0, "read": 0}


def test_drop_warning_names_the_fix_and_is_rate_limited(caplog):
    cap = FakeCapture()
    cap.drop_hint = "raise -B (the -i capture ring, now 64 MB)"
    caplog.set_level(logging.WARNING, logger="pycopy.capture")
    try:
        assert cap.check_drops(100.0) == 0 and not caplog.records
        assert cap.drop_check_at == 101.0
        cap.kdrops = 40
        assert cap.check_drops(101.0) == 40
        assert len(caplog.records) == 1
        msg = caplog.records[0].getMessage()
        assert "dropped 40 packet(s) (40 in all)" in msg and "raise -B" in msg
        cap.kdrops = 90  # more drops within DROP_WARN_S: counted, not logged yet
        assert cap.check_drops(102.0) == 50
        assert len(caplog.records) == 1
        assert cap.check_drops(101.0 + DROP_WARN_S) == 50
        assert len(caplog.records) == 2
        assert "dropped 50 packet(s) in the last 10 s (90 in all)" in caplog.records[1].getMessage()
        assert cap.check_drops(200.0) == 0 and len(caplog.records) == 2  # no new drops
    finally:
        cap.close()
