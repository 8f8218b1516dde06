"""The contracts between the core and its parts: connectors, directory, archive, sessions."""

from zope.interface import Attribute, Interface


class DirectoryUnavailable(Exception):
    """
    The directory cannot answer now (its server is unreachable and nothing
    usable is cached): a temporary failure, to be answered in each
    protocol's own terms ("try again later"), never as a wrong password.
    """


class LoginThrottled(Exception):
    """Too many failed logins for this user or from this address; refused for a while."""


class IConnector(Interface):
    """
    One protocol's side of the gateway (OSCAR, Sametime, SIP, XMPP, ...).

    A connector is also an ``IService``: the gateway starts it (it opens its
    listeners) and stops it (it closes them and logs its sessions out).
    It reaches the rest of the gateway only through the `GatewayApi` it was
    built with.
    """

    name = Attribute("The connector's name, as in the config ``[connectors.NAME]``.")
    networks = Attribute(
        "Tuple of the network names it serves, e.g. ('aim', 'icq') for OSCAR."
    )

    def domain_for(network):
        """
        The domain of this gateway's own addresses on ``network``, or ``""``
        where the network has no domains (AIM, Sametime). Used to build
        aliases for people from other networks.
        """

    def can_reach(address):
        """
        True when this connector can deliver to ``address`` without a
        session of it (a federated server or foreign domain it peers with).
        """

    # Optional: ``disconnect(session, reason)`` ends ``session``'s connection
    # in the protocol's own terms (a stream error, a redirect, an error line)
    # so that its client connects again, to another node of a cluster:
    # called for every session when the node is drained. A connector
    # without it keeps its sessions until they log out.

    # Optional: ``foreign_watchers(identity)`` returning the foreign addresses
    # (subscribers on a federated server) that should see ``identity``'s
    # presence; the bus sends each a `Presence` through the one path. The
    # bus calls it on every presence change of ``identity``, so a connector
    # may also take the call as that signal (the SIP connector does, for
    # subscriptions of people with no session).

    def deliver(event, session):
        """
        Hand ``event`` to ``session`` (a `gateway.path.sessions.Session` this
        connector registered), or, when ``session`` is None, to the remote
        ``event.recipient`` this connector said it can reach, or to a
        recipient it submitted the event for with ``through=`` itself.

        ``event.recipient`` is already the recipient's address on this
        connector's network and ``event.sender`` the sender's address (or
        stable alias) there. Return None, or a Deferred that fails if the
        event could not be handed over. Raising or failing makes the bus
        queue the event for later (or reject it when nobody can take it).
        """


class IDirectory(Interface):
    """
    People, their handles on each network, groups, contact lists and aliases.

    Every method returns a Deferred (the reactor never waits on a
    directory); values are `gateway.model` objects, never database rows.
    """

    def authenticate(address, password):
        """
        Fire with the `Identity` whose handle is ``address`` and whose
        password matches, else None; fail with `DirectoryUnavailable` when
        the directory cannot tell now.
        """

    def secret(address, scheme):
        """
        Fire with ``(identity, value)``: a protocol login secret derived from
        the password of the person owning ``address`` (schemes in
        `gateway.directory.secrets`: ``md5``, ``scram-sha-1``,
        ``scram-sha-256``, ``digest-md5:REALM:USER``,
        ``digest-sha-256:REALM:USER``); value None when there is none,
        identity None for nobody.
        """

    secrets_complete = Attribute(
        "True when `secret` answers for everyone who has a password (the SQL"
        " directory derives secrets when a password is set); False when"
        " secrets exist only once learned from a login that sent the password"
        " (LDAP). Connectors use it to choose which login methods to offer."
    )

    def identity_for(address):
        """Fire with the `Identity` that owns handle ``address``, or None."""

    def get_identity(identity_id):
        """Fire with the `Identity` of that id, or None."""

    def contacts(identity_id):
        """Fire with that person's contact list: a list of `Contact`."""

    def set_contacts(identity_id, contacts):
        """Replace that person's contact list with ``contacts`` (a list of `Contact`)."""

    def watchers_of(identity_id):
        """Fire with the ids of the people who have any handle of ``identity_id`` in their contact list."""

    def alias_for(address, network, domain):
        """
        Fire with the stable alias `Address` on ``network`` (and ``domain``)
        under which foreign ``address`` appears there; created and stored on
        first use, the same ever after.
        """

    def resolve_alias(address):
        """Fire with the foreign `Address` that alias ``address`` stands for, or None."""


class IArchive(Interface):
    """
    The record of every event and every decision.

    ``record`` never blocks the reactor: rows go to a writer (a child
    process by default, or a thread) that writes them in batches. The event id is the key, so recording
    the same event twice keeps one row.
    """

    def record(event, verdict, outcome=None, wait=False, strict=True, *, original=None, transforms=()):
        """
        Record ``event`` with the policy ``verdict`` (a `Verdict`) and, when
        known, its `Outcome`. With ``wait=False`` return None at once. With
        ``wait=True`` return a Deferred that fires when the row is durable:
        in the database, or, when ``strict`` is false, in the database or
        the local spool (which the database receives later); it fails with
        `ArchiveUnavailable` when the row could not be made durable so.
        When transform hooks changed ``event``, ``original`` is the event as
        its sender sent it and ``transforms`` the hooks' names, in order.
        """

    def record_delivery(event_id, status, where):
        """Note that ``event_id`` reached ``status`` (delivered/queued) at ``where``."""

    def queue_depth():
        """How many records wait to be written."""


class IOfflineStore(Interface):
    """Events held for people who are offline, delivered at their next login exactly once."""

    def store(identity_id, event):
        """Hold ``event`` for ``identity_id``; a Deferred fired when durable. Same event id twice: one copy."""

    def pending(identity_id):
        """Fire with the events held for ``identity_id``, oldest first."""

    def remove(identity_id, event_ids):
        """Forget these events held for ``identity_id`` (they were delivered); a Deferred."""


class ISessionRegistry(Interface):
    """Who is online, where: identity -> sessions (on any connector, any node)."""

    def add(session):
        """Register a `Session`."""

    def remove(session):
        """Forget a `Session`."""

    def sessions_of(identity_id):
        """The list of live sessions of that person, most recently active first."""

    def live(identity_id):
        """The same sessions as a tuple the caller must not change (no copy: for the path)."""

    def by_address(address):
        """The list of sessions whose address is ``address``."""

    def count_by_connector():
        """A dict connector name -> number of sessions."""
