"""The gateway side of the bench: a real GatewayService with a small ``bench`` connector."""

import os
import shutil
import tempfile
import time

# common also puts the repository on sys.path (for ``import gateway``).
from common import ACK, ERROR, HEADER, HEADER2, MAX_BODY, cluster_secret, frame

from twisted.application import service
from twisted.internet import protocol, threads
from twisted.internet.defer import gatherResults, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import load as load_config
from gateway.directory.sql import DirectoryStore
from gateway.hookspecs import hookimpl
from gateway.interfaces import IConnector
from gateway.model import Address
from gateway.service import GatewayService

_unpack = HEADER.unpack_from
_pack2 = HEADER2.pack

# The config of one bench gateway: SQLite in a temp dir, archive on (not
# fail-closed), no admin listener, default directory cache, and rules that
# the bench traffic (im between people of the directory) never matches, so
# each is evaluated for every message before the default allows it.
CONFIG = """\
# Written by the gateway bench for one run.
[gateway]
node = "{node}"
data_dir = "{data_dir}"
{cluster}

[archive]
fail_closed = false
durable = {durable}
chain = {chain}

[admin]
listen = ""

[plugins]
disabled = {disabled}

[policy]
default = "allow"

[[policy.rule]]
name = "no-files"
action = "deny"
kinds = ["file"]
reason = "file transfer is off"

[[policy.rule]]
name = "blocked-domains"
action = "deny"
from = ["domain:blocked.example", "domain:spam.example"]
kinds = ["im", "chat"]

[[policy.rule]]
name = "legal-is-internal-only"
action = "deny"
to = ["group:legal"]
direction = "inbound"

[[policy.rule]]
name = "mallory"
action = "deny"
from = ["user:mallory", "aim:eve", "network:icq"]

[[policy.rule]]
name = "sales-to-outside"
action = "deny"
from = ["group:sales"]
direction = "outbound"

{connectors}
"""


def installed_plugins():
    """Names of the installed ``gateway`` entry-point plugins."""
    import importlib.metadata

    return sorted({ep.name for ep in importlib.metadata.entry_points(group="gateway")})


def write_config(data_dir, connectors, entry_points=False, durable=True, chain=True, node="bench", redis="",
                 prefix="gw"):
    """
    Write the bench config (``connectors``: TOML text of its connector
    tables) and return its path. Unless ``entry_points``, every installed
    entry-point plugin is disabled, so that the figures do not depend on
    what happens to be installed.
    """
    disabled = [] if entry_points else installed_plugins()
    path = os.path.join(data_dir, "gateway.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            CONFIG.format(
                data_dir=data_dir,
                node=node,
                cluster=(f'[cluster]\nredis = "{redis}"\nprefix = "{prefix}"\nsecret_file = "{cluster_secret(prefix)}"\n'
                         if redis else ""),
                connectors=connectors,
                durable="true" if durable else "false",
                chain="true" if chain else "false",
                disabled="[" + ", ".join(f'"{name}"' for name in disabled) + "]",
            )
        )
    return path


def count_rows(engine):
    """``{kind: rows}`` of the archive's events table (blocking: call it in a thread)."""
    import sqlalchemy as sa

    from gateway.storage.schema import events

    with engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.kind, sa.func.count()).group_by(events.c.kind)).all()
    return {kind: n for kind, n in rows}


@inlineCallbacks
def drain_archive(reactor, gateway, timeout=120.0):
    """
    Wait until the archive writer's queue is empty and the row counts stop
    changing; fire with the counts, how long that took and the writer's state.
    """
    started = time.monotonic()
    archive = gateway.archive
    counts = None
    settled_at = started
    timed_out = False
    while True:
        if archive.queue_depth() == 0:
            now = yield threads.deferToThread(count_rows, gateway.engine)
            if now == counts:
                break
            counts, settled_at = now, time.monotonic()
        if time.monotonic() - started > timeout:
            timed_out = True
            break
        yield deferLater(reactor, 0.05, lambda: None)
    return {
        "rows": counts or {},
        "drain_seconds": round(settled_at - started, 3),
        "timed_out": timed_out,
        "archive_queue": archive.queue_depth(),
        "archive_spooled": archive.spooled(),
        "archive_state": archive.state,
    }


class BenchProtocol(protocol.Protocol):
    """
    One client of the bench connector: its first frame logs in as
    ``bench:benchI``; each later frame becomes a `Message` submitted to the
    bus, addressed to ``bench:benchJ`` (J from the frame).
    """

    def __init__(self, connector):
        self.connector = connector
        self.api = connector.api
        self.session = None
        self.registered = False
        self._buffer = b""

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.connector.connections += 1

    def dataReceived(self, data):
        if self._buffer:
            data = self._buffer + data
        end = len(data)
        offset = 0
        connector = self.connector
        api = self.api
        submit, message, outcome = api.submit, api.message, connector.outcome
        addresses = connector.addresses
        session = self.session
        taken = dropped = 0
        while end - offset >= 8:
            (length,) = _unpack(data, offset)
            stop = offset + 4 + length
            if stop > end:
                break
            if length > MAX_BODY or length < 4:
                self.transport.loseConnection()
                return
            (index,) = _unpack(data, offset + 4)
            if not self.registered:
                self.registered = True
                self.login(index)
            elif session is None:
                dropped += 1  # a client must wait for the ACK of its login
            else:
                recipient = addresses.get(index) or connector.address(index)
                text = data[offset + 8 : stop].decode("utf-8")
                submit(message(session.address, recipient, text), connector).addCallback(outcome)
                taken += 1
            offset = stop
        self._buffer = data[offset:] if offset < end else b""
        connector.frames_in += taken + dropped
        connector.dropped += dropped

    def login(self, index):
        address = self.connector.address(index)
        d = self.api.identity_for(address)
        d.addCallback(self._identified, address)
        d.addErrback(self._failed)

    def _identified(self, identity, address):
        if identity is None:
            self._refuse(f"no person has the handle {address}")
            return None
        d = self.api.login(identity, address, self.connector.name, handler=self)
        return d.addCallback(self._logged_in)

    def _logged_in(self, session):
        if not self.transport.connected or self.transport.disconnecting:
            self.api.logout(session)
            return
        self.session = session
        self.connector.sessions.add(session)
        self.transport.write(frame(ACK))

    def _failed(self, failure):
        self.connector.log.failure("bench login failed", failure)
        self._refuse(failure.getErrorMessage())

    def _refuse(self, reason):
        self.transport.write(frame(ERROR, reason.encode("utf-8")))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.connector.connections -= 1
        if self.session is not None:
            session, self.session = self.session, None
            self.connector.sessions.discard(session)
            self.api.logout(session)


@implementer(IConnector)
class BenchConnector(service.Service):
    """
    ``[connectors.bench]``, network ``bench``: ``port`` and ``backlog`` of
    its listener on 127.0.0.1. Delivers a message as a frame carrying the
    sender's index and the text; counts the outcomes of what it submitted.
    """

    name = "bench"
    networks = ("bench",)
    log = Logger()

    def __init__(self, api, config):
        self.api = api
        self.port = int(config.get("port", 0))
        self.backlog = int(config.get("backlog", 50))
        self.addresses = {}  # index -> Address, the bench protocol's handle table
        self.sessions = set()
        self.connections = 0
        self.listening = None
        self.reset()

    def reset(self):
        self.frames_in = self.frames_out = self.dropped = 0
        self.outcomes = {}
        self.reasons = {}

    def address(self, index):
        address = self.addresses.get(index)
        if address is None:
            address = self.addresses[index] = Address("bench", f"bench{index}")
        return address

    def domain_for(self, network):
        return ""

    def can_reach(self, address):
        return False

    def deliver(self, event, session):
        payload = event.text.encode("utf-8")
        try:
            sender = int(event.sender.user[5:])
        except ValueError:
            sender = ERROR
        session.handler.transport.write(_pack2(4 + len(payload), sender) + payload)
        self.frames_out += 1

    def outcome(self, outcome):
        status = outcome.status.value
        self.outcomes[status] = self.outcomes.get(status, 0) + 1
        if not outcome.delivered:
            reason = f"{status}: {outcome.code} {outcome.reason}"
            if reason in self.reasons or len(self.reasons) < 5:
                self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def startService(self):
        super().startService()
        factory = protocol.Factory.forProtocol(lambda: BenchProtocol(self))
        self.listening = self.api.reactor.listenTCP(
            self.port, factory, backlog=self.backlog, interface="127.0.0.1"
        )

    def stopService(self):
        super().stopService()
        sessions = list(self.sessions)
        self.sessions.clear()
        for session in sessions:
            session.handler.session = None
            session.handler.transport.loseConnection()
        listening, self.listening = self.listening, None
        waits = [self.api.logout(s) for s in sessions]
        if listening is not None:
            waits.append(listening.stopListening())
        return gatherResults(waits, consumeErrors=True)


class BenchPlugin:
    """The plugin offering the ``bench`` connector (registered as an extra plugin)."""

    @hookimpl
    def gateway_register_connectors(self, api):
        api.register_connector("bench", BenchConnector)


class GatewayRelay:
    """The ``--mode gateway`` server of relay.py."""

    mode = "gateway"

    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.data_dir = tempfile.mkdtemp(prefix="gateway-bench-")
        self.service = None

    def writer_pid(self):
        """The archive writer process's id, when the archive runs in one."""
        return getattr(getattr(self.service, "archive", None), "pid", None)

    def start(self):
        path = write_config(
            self.data_dir,
            f"[connectors.bench]\nport = {self.args.port}\nbacklog = {self.args.backlog}\n",
            entry_points=self.args.entry_points,
            durable=not getattr(self.args, "no_durable", False),
            chain=not getattr(self.args, "no_chain", False),
            node=getattr(self.args, "node", "bench"),
            redis=getattr(self.args, "redis", ""),
            prefix=getattr(self.args, "prefix", "gw"),
        )
        self.service = GatewayService(load_config(path), self.reactor, extra_plugins=[("bench", BenchPlugin())])
        started = time.monotonic()
        store = DirectoryStore(self.service.engine)
        for i in range(self.args.users):
            store.add_person(f"bench{i}", password=None, handles=[f"bench:bench{i}"])
        self.users_seconds = time.monotonic() - started
        self.service.startService()
        self.connector = self.service.core.connectors["bench"]
        return succeed(self.connector.listening.getHost().port)

    def reset(self):
        self.connector.reset()

    def stats(self):
        c = self.connector
        archive = self.service.archive
        return {
            "connections": c.connections,
            "sessions": len(self.service.core.sessions),
            "frames_in": c.frames_in,
            "frames_out": c.frames_out,
            "dropped": c.dropped,
            "outcomes": dict(c.outcomes),
            "reasons": dict(c.reasons),
            "archive_queue": archive.queue_depth(),
            "archive_spooled": archive.spooled(),
            "archive_state": archive.state,
            "users_seconds": round(self.users_seconds, 3),
            "plugins": sorted(self.service.core.plugins.loaded),
        }

    def drain(self):
        return drain_archive(self.reactor, self.service)

    @inlineCallbacks
    def stop(self):
        try:
            if self.service is not None and self.service.running:
                yield self.service.stopService()
        finally:
            self.cleanup()

    def cleanup(self):
        shutil.rmtree(self.data_dir, ignore_errors=True)
