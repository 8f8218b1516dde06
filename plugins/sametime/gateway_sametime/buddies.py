"""The awareness, storage and resolve services: watched users' presence, the saved buddy list, user look-ups."""

from __future__ import annotations

from twisted.internet.defer import DeferredList, succeed

from gateway.plugin import PresenceStatus

from gateway_sametime import adapter, codec
from gateway_sametime.common import CLOSED


class BuddyServices:
    """The `SametimeServerProtocol`'s AWARE, STORAGE and RESOLVE services (a mixin: its state is the protocol's)."""

    # -- AWARE ---------------------------------------------------------------

    def _aware_data(self, channel, send_type, data):
        if send_type == codec.AWARE_ADD:
            ids = [i for i in codec.decode_aware_list(data) if i.type == codec.AWARE_USER]
            if len(self.watched) + len(ids) > self.settings.max_watched:
                raise codec.CodecError(f"watching more than {self.settings.max_watched} users")
            users = [i.user for i in ids]
            self.watched.update(u.lower() for u in users)
            self._aware_snapshot(channel, ids)
            if users and self.identity is not None:
                self.connector.ensure_contacts(self.identity.id, users).addErrback(self._contacts_failed)
        elif send_type == codec.AWARE_REMOVE:
            for aware_id in codec.decode_aware_list(data):
                self.watched.discard(aware_id.user.lower())
        elif send_type in (codec.AWARE_ATTRIB_WATCH, codec.AWARE_ATTRIB_SET, codec.AWARE_ATTRIB_UNSET):
            return  # attributes (capabilities, avatars) are not served
        else:
            self.log.info("sametime: AWARE type 0x{t:04x} from {user} ignored", t=send_type, user=self.user_id)

    def _contacts_failed(self, failure):
        self.log.failure("sametime: saving the watched users of {user} failed", failure, user=self.user_id)

    def _aware_snapshot(self, channel, ids):
        lookups = [self.connector.presence_for(self.identity, adapter.safe_address(i.user), self.address)
                   for i in ids]

        def answer(results):
            if self.state == CLOSED or self.channels.get(channel.id) is not channel:
                return
            entries = []
            for aware_id, (ok, value) in zip(ids, results):
                status, note, name = value if ok and value else (PresenceStatus.OFFLINE, "", "")
                entries.append(codec.AwareEntry(
                    codec.AwareId(aware_id.user, aware_id.community),
                    adapter.user_status(status, note),
                    name or aware_id.user,
                ))
            self._channel_send(channel, codec.AWARE_SNAPSHOT, codec.encode_aware_snapshot(entries))

        DeferredList(lookups, consumeErrors=True).addCallback(answer)

    def _presence(self, user, event):
        channel = self.aware_channel
        if channel is None or not channel.open or user.lower() not in self.watched:
            return None
        entry = codec.AwareEntry(codec.AwareId(user), adapter.user_status(event.status, event.note), user)
        self._channel_send(channel, codec.AWARE_UPDATE, codec.encode_aware_snapshot([entry])[4:])
        return None

    # -- STORAGE ---------------------------------------------------------------

    def _storage_data(self, channel, send_type, data):
        if send_type == codec.STORAGE_LOAD:
            request_id, keys = codec.decode_storage_load(data)
            self._storage_load(channel, request_id, keys)
        elif send_type == codec.STORAGE_SAVE:
            request_id, units = codec.decode_storage_save(data)
            self._storage_save(channel, request_id, units)
        else:
            raise codec.CodecError(f"unknown storage request 0x{send_type:04x}")

    def _storage_load(self, channel, request_id, keys):
        if codec.STORAGE_AWARE_LIST not in keys:
            data = codec.encode_storage_loaded(request_id, codec.ERR_NO_ELEMENT)
            self._channel_send(channel, codec.STORAGE_LOADED, data)
            return

        def loaded(entries):
            if self.channels.get(channel.id) is not channel:
                return
            text = adapter.entries_to_list(entries)
            unit = (codec.STORAGE_AWARE_LIST, codec.string(text))
            self._channel_send(channel, codec.STORAGE_LOADED, codec.encode_storage_loaded(request_id, 0, [unit]))

        d = self.connector.list_entries(self.identity.id)
        d.addCallbacks(loaded, self._storage_failed, errbackArgs=(channel, request_id, codec.STORAGE_LOADED))

    def _storage_save(self, channel, request_id, units):
        text = None
        for key, value in units:
            if key == codec.STORAGE_AWARE_LIST:
                r = codec.Reader(value)
                text = r.string()
        if text is None:
            data = codec.encode_storage_saved(request_id, codec.ERR_NO_ELEMENT)
            self._channel_send(channel, codec.STORAGE_SAVED, data)
            return

        def saved(_):
            if self.channels.get(channel.id) is channel:
                self._channel_send(channel, codec.STORAGE_SAVED, codec.encode_storage_saved(request_id, 0))

        entries = adapter.list_to_entries(text)
        if len(entries) > self.settings.max_watched:
            raise codec.CodecError(f"buddy list of {len(entries)} users is over the limit")
        self.connector.save_entries(self.identity.id, entries).addCallbacks(
            saved, self._storage_failed, errbackArgs=(channel, request_id, codec.STORAGE_SAVED)
        )

    def _storage_failed(self, failure, channel, request_id, reply):
        self.log.failure("sametime: storage for {user} failed", failure, user=self.user_id)
        if self.channels.get(channel.id) is channel:
            if reply == codec.STORAGE_LOADED:
                data = codec.encode_storage_loaded(request_id, codec.ERR_FAILURE)
            else:
                data = codec.encode_storage_saved(request_id, codec.ERR_FAILURE)
            self._channel_send(channel, reply, data)

    # -- RESOLVE ---------------------------------------------------------------

    def _resolve_data(self, channel, send_type, data):
        if send_type != codec.RESOLVE_LOOKUP:
            raise codec.CodecError(f"unknown resolve request 0x{send_type:04x}")
        search_id, names, _flags = codec.decode_resolve_request(data)
        if len(names) > self.settings.max_watched:
            raise codec.CodecError("too many names in one look-up")
        lookups = [self._resolve_one(name) for name in names]

        def answer(results):
            if self.channels.get(channel.id) is not channel:
                return
            out = [value for _, value in results]
            code = codec.RESOLVE_SUCCESS if all(r.matches for r in out) else codec.RESOLVE_PARTIAL
            self._channel_send(channel, codec.RESOLVE_LOOKUP, codec.encode_resolve_reply(search_id, code, out))

        DeferredList(lookups, consumeErrors=True).addCallback(answer)

    def _resolve_one(self, name):
        address = adapter.safe_address(name)
        if address is None:
            return succeed(codec.ResolveResult(name, codec.RESOLVE_BAD_FORMAT))

        def found(display):
            if display is None:
                return codec.ResolveResult(name, codec.ERR_NO_USER)
            return codec.ResolveResult(name, codec.RESOLVE_SUCCESS, (codec.ResolveMatch(name, display, ""),))

        def failed(failure):
            self.log.failure("sametime: resolving {name} failed", failure, name=name)
            return codec.ResolveResult(name, codec.ERR_FAILURE)

        return self.connector.known(address).addCallbacks(found, failed)
