"""What the parts of the OSCAR server protocol share: the families served, sign-off codes and `ProtocolViolation`."""

from __future__ import annotations

# The families this server offers (01/03) and their versions (01/18).
FAMILY_VERSIONS = {0x0001: 4, 0x0002: 1, 0x0003: 1, 0x0004: 1, 0x0009: 1, 0x0013: 4}

# Codes of TLV 9 in a channel-4 frame that closes a BOS connection.
SIGNOFF_OTHER_LOCATION = 0x0001
SIGNOFF_PROTOCOL_ERROR = 0x0003
SIGNOFF_RATE_LIMIT = 0x0004
SIGNOFF_IDLE = 0x0005
SIGNOFF_SHUTDOWN = 0x0006

# Chat navigation and chat rooms: served on connections of their own (gateway_oscar.chat); on BOS they are refused.
CHAT_FAMILIES = frozenset({0x0D, 0x0E})


class ProtocolViolation(Exception):
    """Bad input that closes the connection; ``code`` goes into TLV 9 of the channel-4 frame."""

    def __init__(self, reason, code=SIGNOFF_PROTOCOL_ERROR):
        super().__init__(reason)
        self.reason, self.code = reason, code
