"""The file-transfer service: a client's offer is a `FileOffer` on the path, refused or shown, never carried."""

from __future__ import annotations

from gateway_sametime import adapter, codec
from gateway_sametime.common import CLOSED

# How offers are named in FileOffer.transfer (never shown to anyone).
TRANSFER_PREFIX = "sametime:"


class FileService:
    """
    The `SametimeServerProtocol`'s file-transfer service (a mixin: its state
    is the protocol's). A client offers a file by creating a channel for
    service 0x38 to the recipient, naming the file, its size and a message
    in the channel's addtl block. The offer becomes a `FileOffer` submitted
    down the path: refused, the channel is closed with the refusal's error
    (``ERR_NOT_AUTHORIZED`` for a policy); allowed, the recipient is shown
    the offer by their own connector and the channel is closed with
    ``ERR_SERVICE_NO_SUPPORT``, since this server carries no file bytes.
    The channel is never accepted, so no data flows on it.
    """

    def _create_file(self, channel, message):
        try:
            addtl = codec.FileAddtl.decode(message.addtl)
        except codec.CodecError as e:
            self.destroy_channel(channel.id, codec.ERR_BAD_DATA, f"bad file offer: {e}", "warn")
            return
        peer = adapter.safe_address(message.target.user)
        if peer is None:
            self.destroy_channel(channel.id, codec.ERR_NO_USER, f"no such user {message.target.user!r}")
            return
        channel.peer, channel.peer_user = peer, message.target.user
        d = self.connector.known(peer)
        d.addCallback(self._file_target_known, channel, addtl, message.addtl)
        d.addErrback(self._internal, "file offer")

    def _file_target_known(self, display, channel, addtl, raw):
        if self.channels.get(channel.id) is not channel:
            return None
        if display is None:
            self.destroy_channel(channel.id, codec.ERR_NO_USER, f"no such user {channel.peer_user!r}")
            return None
        offer = self.api.file_offer(self.address, channel.peer, addtl.name[:256], addtl.size, addtl.message,
                                    transfer=f"{TRANSFER_PREFIX}{channel.id:08x}")
        if self.api.capturing:
            self.api.capture(offer.id, "received", self.address.network, raw, ("channel-create-addtl",))
        return self.api.submit(offer, origin=self.connector).addCallback(self._file_outcome, channel)

    def _file_outcome(self, outcome, channel):
        if self.state == CLOSED or self.channels.get(channel.id) is not channel:
            return outcome
        from gateway_sametime.im import OUTCOME_ERRORS

        if outcome.rejected:
            code = OUTCOME_ERRORS.get(outcome.code, codec.ERR_FAILURE)
            why = f"file offer to {channel.peer} rejected ({outcome.code}): {outcome.reason}"
        else:
            code = codec.ERR_SERVICE_NO_SUPPORT
            why = f"file offer shown to {channel.peer}; this server does not carry the file itself"
        self.destroy_channel(channel.id, code, why)
        return outcome
