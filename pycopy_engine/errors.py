"""One exception hierarchy for the whole package."""


class PycopyError(Exception):
    """Base of every error pycopy raises on purpose."""


class WireError(PycopyError):
    """Bytes that do not parse: short, truncated or malformed input.

    ``reason`` is a short counter-friendly word (``"truncated"``, ``"fragment"``,
    ``"not_tcp"`` …) so callers can count rejects by reason without parsing text.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class ProtocolError(PycopyError):
    """A peer broke the control-channel protocol (bad hello, bad framing)."""


class ConfigError(PycopyError):
    """A bad option or option value; the message names both."""
