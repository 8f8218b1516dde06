"""SIMPLE presence: SUBSCRIBE, NOTIFY and PUBLISH, for our users, watchers of peers, and peers' watchers."""

from __future__ import annotations

import os

from gateway.plugin import Contact, PresenceStatus

from gateway_sip import adapter
from gateway_sip.codec import SipError, parse_name_addr, digits
from gateway_sip.common import log
from gateway_sip.pidf import PidfError, parse_pidf
from gateway_sip.records import Subscription, Upstream, Publication


class PresenceServer:
    """The `SipConnector`'s presence server (a mixin: its state is the connector's)."""

    # -- presence: SUBSCRIBE / NOTIFY / PUBLISH ----------------------------------

    def _on_subscribe(self, request, transaction, flow):
        event = (request.headers.get("event") or "").split(";")[0].strip().lower()
        if event != "presence":
            raise SipError(f"event package {event or '(none)'!r} is not supported", 489)
        expires_header = request.headers.get("expires")
        if expires_header is not None and not digits(expires_header.strip()):
            raise SipError("Expires is not a number", 400)
        to = request.to_()
        if to.tag is not None:
            return self._resubscribe(request, transaction, flow, to.tag, expires_header)
        target = self._address(request.uri)
        if target.domain not in self.domains and target.domain not in self.peers:
            raise SipError(f"presence of {target.domain} users is not served here", 404)
        d = self._sender(request, transaction, flow)
        return d.addCallback(self._subscribed, request, transaction, flow, target, expires_header)

    def _subscribed(self, watcher, request, transaction, flow, target, expires_header):
        if watcher is None:
            return None
        if target.domain in self.peers and watcher.domain in self.peers:
            raise SipError(f"the gateway is no transit proxy: presence of {target.domain} users is not relayed "
                           f"to {watcher.domain}", 403)
        expires = int(expires_header) if expires_header is not None else self.default_expires
        expires = min(expires, self.max_expires)
        frm = request.from_()
        contact = request.headers.get_all("contact")
        remote = parse_name_addr(contact[0]).uri if contact else frm.uri
        local_tag = self._tag_for(request)
        sub = Subscription(
            watcher=watcher, target=target, call_id=request.call_id, remote_tag=frm.tag or "",
            local_tag=local_tag, remote_contact=remote, flow=flow,
            expires_at=self.clock.seconds() + expires, foreign=watcher.domain in self.peers,
        )
        self._respond(transaction, 200, headers=[("Expires", str(expires)), ("Contact", self._contact_header(flow))],
                      to_tag=local_tag)
        if expires == 0:
            self._notify(sub, None, terminated="timeout")
            return None
        old = self.subscriptions.get(sub.key)
        if old is not None:
            self._drop_subscription(old)
        elif self._watching.get(watcher, 0) >= self.max_subscriptions:
            self._notify(sub, None, terminated="rejected")
            log.warn("SIP: {watcher} has {n} subscriptions already; refused one more", watcher=str(watcher),
                     n=self.max_subscriptions)
            return None
        self._add_subscription(sub)
        if target.domain in self.peers:
            self._upstream(watcher, target, expires)
        sub.timer = self.clock.callLater(expires, self._expire_subscription, sub)
        log.info("SIP: {watcher} subscribed to {target} for {expires}s", watcher=str(watcher), target=str(target),
                 expires=expires)
        return self._initial_state(sub)

    def _resubscribe(self, request, transaction, flow, to_tag, expires_header):
        frm = request.from_()
        sub = self.subscriptions.get((request.call_id, frm.tag or "", to_tag))
        if sub is None:
            raise SipError("no such subscription", 481)
        if flow.key == sub.flow.key:
            return self._refresh(sub, transaction, flow, expires_header)
        # From elsewhere (a new connection, another address): only the subscriber may refresh
        # or end it, so it proves who it is as for a new subscription.
        d = self._sender(request, transaction, flow)

        def checked(sender):
            if sender is None:
                return None  # challenged or refused already
            if sender != sub.watcher:
                raise SipError("only the subscriber may refresh or end this subscription", 403)
            if self.subscriptions.get(sub.key) is not sub:
                raise SipError("no such subscription", 481)
            return self._refresh(sub, transaction, flow, expires_header)

        return d.addCallback(checked)

    def _refresh(self, sub, transaction, flow, expires_header):
        expires = int(expires_header) if expires_header is not None else self.default_expires
        expires = min(expires, self.max_expires)
        self._respond(transaction, 200, headers=[("Expires", str(expires)), ("Contact", self._contact_header(flow))])
        sub.flow = flow
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        if expires == 0:
            self._drop_subscription(sub)
            self._notify(sub, sub.last_state, terminated="timeout")
            return None
        sub.expires_at = self.clock.seconds() + expires
        sub.timer = self.clock.callLater(expires, self._expire_subscription, sub)
        self._notify(sub, sub.last_state or (PresenceStatus.OFFLINE, ""), force=True)
        if sub.target.domain in self.peers:
            self._upstream(sub.watcher, sub.target, expires)
        return None

    def _initial_state(self, sub):
        """The first NOTIFY: the target's presence as the policy (kind presence) lets the watcher see it."""
        if self.subscribe_adds_contact and not sub.foreign:
            self._add_contact(sub.watcher, sub.target)

        def with_identity(identity):
            if identity is None:
                state = (PresenceStatus.OFFLINE, "")
            else:
                status, note = self.api.presence_of(identity.id)
                state = (PresenceStatus(status), note)
            return self._show(sub.watcher, sub.target, state, initial=True)

        return self.api.identity_for(sub.target).addCallback(with_identity)

    def _add_contact(self, watcher, target):
        def got(identity):
            if identity is None:
                return None
            return self.api.contacts(identity.id).addCallback(add, identity)

        def add(contacts, identity):
            if any(c.address == target for c in contacts):
                return None
            return self.api.set_contacts(identity.id, list(contacts) + [Contact(target, name=target.user)])

        self.api.identity_for(watcher).addCallback(got).addErrback(
            lambda f: log.failure("SIP: could not add {target} to {watcher}'s contacts", f,
                                  target=str(target), watcher=str(watcher)))

    def _notify_watcher(self, watcher, presence):
        """A presence event for ``watcher``: NOTIFY its subscriptions to the sender."""
        if watcher is None:
            return
        state = (PresenceStatus(presence.status), presence.note)
        for sub in list(self._by_pair.get((watcher, presence.sender), {}).values()):
            self._notify(sub, state)

    def _notify(self, sub, state, terminated=None, force=False):
        if state is not None and state == sub.last_state and not force and terminated is None:
            return None
        if state is not None:
            sub.last_state = state
        flow = sub.flow
        if not flow.alive:
            self._drop_subscription(sub)
            return None
        sub.cseq += 1
        remaining = max(0, int(round(sub.expires_at - self.clock.seconds())))
        if terminated:
            sub_state = f"terminated;reason={terminated}"
        else:
            sub_state = f"active;expires={remaining}"
        status, note = state or (PresenceStatus.OFFLINE, "")
        body = adapter.presence_body(adapter.uri_of(sub.target), status, note)
        request = self._request(
            "NOTIFY", sub.remote_contact, adapter.uri_of(sub.target), adapter.uri_of(sub.watcher), flow,
            from_tag=sub.local_tag, to_tag=sub.remote_tag or None, call_id=sub.call_id, cseq=sub.cseq,
            headers=[("Event", "presence"), ("Subscription-State", sub_state), ("Contact", self._contact_header(flow))],
            body=body, content_type="application/pidf+xml",
        )
        d = self.transactions.request(request, flow, request.branch)

        def answered(response):
            if response.status in (481, 404, 403, 489) and self.subscriptions.get(sub.key) is sub:
                log.info("SIP: subscription of {watcher} to {target} ended by a {status} to NOTIFY",
                         watcher=str(sub.watcher), target=str(sub.target), status=response.status)
                self._drop_subscription(sub)

        def lost(failure):
            if self.subscriptions.get(sub.key) is sub:
                log.info("SIP: NOTIFY to {watcher} failed ({why}); subscription dropped",
                         watcher=str(sub.watcher), why=failure.getErrorMessage())
                self._drop_subscription(sub)

        d.addCallbacks(answered, lost)
        return None

    def _expire_subscription(self, sub):
        sub.timer = None
        if self.subscriptions.get(sub.key) is sub:
            self._drop_subscription(sub)
            self._notify(sub, sub.last_state, terminated="timeout")

    def _drop_subscription(self, sub):
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = None
        if self.subscriptions.get(sub.key) is sub:
            del self.subscriptions[sub.key]
            for index, key in ((self._by_pair, (sub.watcher, sub.target)), (self._by_target, sub.target)):
                entries = index.get(key)
                if entries is not None:
                    entries.pop(sub.key, None)
                    if not entries:
                        del index[key]
            left = self._watching.get(sub.watcher, 1) - 1
            if left:
                self._watching[sub.watcher] = left
            else:
                self._watching.pop(sub.watcher, None)
            pair = (sub.watcher, sub.target)
            if pair in self.upstreams and pair not in self._by_pair and self.running:
                self._upstream(sub.watcher, sub.target, 0)  # the last local watcher left

    def _upstream(self, watcher, target, expires):
        """Subscribe (or refresh, or end with 0) at the peer serving ``target``, for ``watcher``."""
        pair = (watcher, target)
        upstream = self.upstreams.get(pair)
        if upstream is None:
            if expires == 0:
                return
            random = self.transactions.random
            upstream = Upstream(watcher, target, f"{random.take(12)}@gateway", random.take(6))
            self.upstreams[pair] = upstream
        if expires == 0:
            del self.upstreams[pair]
        upstream.cseq += 1
        cseq = upstream.cseq

        def send(flow):
            request = self._request(
                "SUBSCRIBE", adapter.uri_of(target), adapter.uri_of(watcher), adapter.uri_of(target), flow,
                from_tag=upstream.local_tag, to_tag=upstream.remote_tag, call_id=upstream.call_id, cseq=cseq,
                headers=[("Event", "presence"), ("Accept", "application/pidf+xml"), ("Expires", str(expires)),
                         ("Contact", self._contact_header(flow))],
            )
            return self.transactions.request(request, flow, request.branch)

        def answered(response):
            if 200 <= response.status < 300:
                if upstream.remote_tag is None:
                    upstream.remote_tag = parse_name_addr(response.headers.get("to", "")).tag
                return
            log.info("SIP: {peer} refused our subscription to {target} for {watcher}: {status}",
                     peer=target.domain, target=str(target), watcher=str(watcher), status=response.status)
            if self.upstreams.get(pair) is upstream:
                del self.upstreams[pair]

        def failed(failure):
            log.info("SIP: subscription to {target} at its peer failed: {why}", target=str(target),
                     why=failure.getErrorMessage())
            if self.upstreams.get(pair) is upstream:
                del self.upstreams[pair]

        self._peer_flow(self.peers[target.domain]).addCallback(send).addCallbacks(answered, failed)

    def _add_subscription(self, sub):
        self.subscriptions[sub.key] = sub
        self._by_pair.setdefault((sub.watcher, sub.target), {})[sub.key] = sub
        self._by_target.setdefault(sub.target, {})[sub.key] = sub
        self._watching[sub.watcher] = self._watching.get(sub.watcher, 0) + 1

    def _on_notify(self, request, transaction, flow):
        """NOTIFY from a peer domain about one of its users, for one of ours."""
        d = self._sender(request, transaction, flow)
        return d.addCallback(self._notified, request, transaction)

    def _notified(self, sender, request, transaction):
        if sender is None:
            return None
        if sender.domain not in self.peers:
            raise SipError("NOTIFY is only accepted from peer domains", 403)
        watcher = self._address(request.to_().uri)
        upstream = self.upstreams.get((watcher, sender))
        if upstream is None or upstream.call_id != request.call_id:
            raise SipError("no such subscription", 481)
        if (request.headers.get("subscription-state") or "").strip().lower().startswith("terminated"):
            del self.upstreams[(watcher, sender)]
        doc = self._pidf(request)
        status = adapter.status_of(doc) if doc is not None else PresenceStatus.OFFLINE
        self._respond(transaction, 200)
        return self._show(watcher, sender, (status, doc.note if doc else ""))

    @staticmethod
    def _pidf(request):
        if not request.body:
            return None
        media, _ = adapter.content_type(request.headers.get("content-type", ""))
        if media != "application/pidf+xml":
            raise SipError(f"presence body must be application/pidf+xml, not {media!r}", 415)
        try:
            return parse_pidf(request.body)
        except PidfError as e:
            raise SipError(f"bad PIDF: {e}", 400) from None

    def _on_publish(self, request, transaction, flow):
        event = (request.headers.get("event") or "").split(";")[0].strip().lower()
        if event != "presence":
            raise SipError(f"event package {event or '(none)'!r} is not supported", 489)
        if len(request.body) > self.max_message_size:
            raise SipError(f"presence document over {self.max_message_size} bytes", 413)
        expires_header = request.headers.get("expires")
        if expires_header is not None and not digits(expires_header.strip()):
            raise SipError("Expires is not a number", 400)
        doc = self._pidf(request)
        target = self._address(request.uri)
        d = self._sender(request, transaction, flow)
        return d.addCallback(self._published, request, transaction, target, doc, expires_header)

    def _published(self, sender, request, transaction, target, doc, expires_header):
        if sender is None:
            return None
        if sender != target:
            raise SipError("you may only publish your own presence", 403)
        expires = int(expires_header) if expires_header is not None else self.default_expires
        expires = min(expires, self.max_expires)
        etag = request.headers.get("sip-if-match")
        publication = None
        if etag is not None:
            publication = self.publications.get(etag)
            if publication is None or publication.aor != sender:
                raise SipError("no such publication", 412)
        elif doc is None:
            raise SipError("initial PUBLISH without a body", 400)
        if publication is not None and publication.timer is not None and publication.timer.active():
            publication.timer.cancel()
        if expires == 0:
            if publication is not None:
                self.publications.pop(publication.etag, None)
            self._respond(transaction, 200, headers=[("Expires", "0")])
            self._apply_presence(sender, PresenceStatus.AVAILABLE, "")
            return None
        if publication is None:
            mine = [p for p in self.publications.values() if p.aor == sender]
            for stale in mine[: max(0, len(mine) - 4)]:  # keep a few per person: the newest win
                self.publications.pop(stale.etag, None)
                if stale.timer is not None and stale.timer.active():
                    stale.timer.cancel()
            publication = Publication(sender, os.urandom(8).hex(), PresenceStatus.AVAILABLE, "")
            self.publications[publication.etag] = publication
        if doc is not None:
            publication.status, publication.note = adapter.status_of(doc), doc.note
        publication.timer = self.clock.callLater(expires, self._expire_publication, publication)
        self._respond(transaction, 200, headers=[("SIP-ETag", publication.etag), ("Expires", str(expires))])
        self._apply_presence(sender, publication.status, publication.note)
        return None

    def _expire_publication(self, publication):
        publication.timer = None
        if self.publications.pop(publication.etag, None) is not None:
            self._apply_presence(publication.aor, PresenceStatus.AVAILABLE, "")

    def _apply_presence(self, aor, status, note):
        for binding in list(self.bindings.get(aor, {}).values()):
            session = binding.session
            if session is not None and (session.status != status or session.note != note):
                self.api.set_presence(session, status, note)
