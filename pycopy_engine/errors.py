"""One exception hierarchy for the whole package."""


class PycopyError(Exception):
    """Base of every error pycopy raises on purpose."""


class WireError(PycopyError):
    """Bytes that do not parse: short, truncated or malformed input."""


class ProtocolError(PycopyError):
    """A peer broke the control-channel protocol (bad hello, bad framing)."""


class ConfigError(PycopyError):
    """A bad option or option value; the message names both."""
