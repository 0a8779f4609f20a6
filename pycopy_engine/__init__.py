"""pycopy: live TCP traffic replication, wire-compatible with TCPCopy 1.0."""

__version__ = "0.1.0"
# The control-channel protocol version spoken with C peers (TCPCopy INTERNAL_VERSION).
INTERNAL_VERSION = 6

# A compiled engine (make accel) is used only while it matches this source.
from . import accel as _accel  # noqa: E402

_accel.guard()
