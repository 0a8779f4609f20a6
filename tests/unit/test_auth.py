"""--secret-file's proof (wire/control.py): HMAC over time and nonce, a clock window."""

from __future__ import annotations

from pycopy_engine.wire.control import CLT_SIZE, check_auth, encode_auth

SECRET = b"correct horse battery staple"
NOW = 1_800_000_000_000  # ms


def body(secret: bytes = SECRET, millis: int = NOW, nonce: bytes = b"12345678") -> bytes:
    return encode_auth(secret, millis, nonce)[CLT_SIZE:]


def test_a_fresh_proof_passes_and_a_wrong_secret_does_not():
    assert check_auth(SECRET, body(), NOW) == ""
    assert check_auth(SECRET, body(secret=b"incorrect horse battery staple"), NOW) == "wrong secret"


def test_tampering_with_time_or_nonce_breaks_the_hmac():
    b = bytearray(body())
    b[7] ^= 1  # the time, moved by 1 ms
    assert check_auth(SECRET, bytes(b), NOW) == "wrong secret"
    b = bytearray(body())
    b[8] ^= 1  # the nonce
    assert check_auth(SECRET, bytes(b), NOW) == "wrong secret"
    assert check_auth(SECRET, body()[:-1], NOW) == "bad authentication record"


def test_clock_skew_window_is_five_minutes_either_way():
    assert check_auth(SECRET, body(millis=NOW - 300_000), NOW) == ""
    assert check_auth(SECRET, body(millis=NOW + 300_000), NOW) == ""
    old = check_auth(SECRET, body(millis=NOW - 300_001), NOW)
    ahead = check_auth(SECRET, body(millis=NOW + 400_000), NOW)
    assert old == "authentication too old or clocks 300 s apart"
    assert ahead == "authentication too old or clocks -400 s apart"
