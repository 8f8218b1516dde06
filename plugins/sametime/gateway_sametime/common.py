"""What the parts of the Sametime server protocol share: session states, channels and their limits."""

from __future__ import annotations

from typing import Optional

from gateway.plugin import Address

from gateway_sametime import codec, crypto

HANDSHAKE, LOGIN, AUTHENTICATING, REDIRECTED, ACTIVE, CLOSED = (
    "handshake", "login", "authenticating", "redirected", "active", "closed",
)

SERVER_CHANNEL = 0x80000000
PENDING_LIMIT = 200  # messages waiting per server-created channel until the client accepts it


class ChannelGone(ConnectionError):
    """A delivery could not be handed over: its channel or the whole session closed."""


class Channel:
    """One open (or opening) channel of a session."""

    def __init__(self, channel_id, service, proto_type, proto_ver, server_created=False):
        self.id = channel_id
        self.service = service
        self.proto_type = proto_type
        self.proto_ver = proto_ver
        self.server_created = server_created
        self.open = False
        self.peer: Optional[Address] = None
        self.peer_user = ""
        self.shown = ""  # the peer's user id as deliveries name it (lower case)
        self.features = codec.IM_CLIENT_PLAIN
        self.outgoing: Optional[crypto.Rc2Stream] = None
        self.incoming: Optional[crypto.Rc2Stream] = None
        self.cipher: Optional[int] = None
        self.pending = []  # (send type, data, Deferred or None)
        self.assembler = None
        self.timer = None
        self.offer_keypair = None
        self.offer_login = None
        self.captured = []  # IM data of the message being assembled, kept for native capture
