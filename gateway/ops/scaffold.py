"""``gatewayctl plugin new``: a new plugin distribution that installs and passes its own tests unchanged."""

from __future__ import annotations

import os
import re
import textwrap

__all__ = ["new_plugin", "ScaffoldError"]


class ScaffoldError(Exception):
    """The plugin cannot be written (bad name, folder taken)."""


_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "gateway-{name}"
version = "0.1.0"
description = "{description}"
requires-python = ">=3.11"
dependencies = ["gateway>=0.1"]

[tool.setuptools.packages.find]
include = ["{package}", "{package}.*"]

# The entry-point group "gateway" is how the gateway finds plugins; the name
# on the left is what [plugins] disabled and gatewayctl plugins show.
[project.entry-points.gateway]
{name} = "{package}.plugin"
'''

_HOOK_PLUGIN = '''\
"""{title}: a compliance hook plugin for gateway.

Configured by ``[plugin.{name}]``: ``words`` (a message containing one, in
any case, is denied) and ``footer`` (text added under every message; empty
for none).
"""

import attrs

from gateway.plugin import Message, Verdict, hookimpl

# The hook spec version this plugin is written for.
gateway_hookspec_version = 1

_settings = {{"words": (), "footer": ""}}


@hookimpl
def gateway_startup(api):
    config = api.plugin_config("{name}")
    _settings["words"] = tuple(word.lower() for word in config.get("words", ()))
    _settings["footer"] = config.get("footer", "")


@hookimpl
def gateway_policy_check(event):
    """Deny a message that mentions a configured word; abstain (None) on anything else."""
    if isinstance(event, Message):
        text = event.text.lower()
        for word in _settings["words"]:
            if word in text:
                return Verdict.deny(f"message mentions {{word!r}}", rule="{name}")
    return None


@hookimpl
def gateway_transform(event):
    """Add the footer to every message (None leaves an event as it is)."""
    if _settings["footer"] and isinstance(event, Message):
        return attrs.evolve(event, text=f"{{event.text}}\\n{{_settings['footer']}}")
    return None
'''

_HOOK_TESTS = '''\
"""{title}: its hooks on a whole gateway core, in memory."""

from twisted.trial import unittest

from gateway.plugin import Message
from gateway.testing import MemoryConnector, MemoryDirectory, make_core

from {package} import plugin

CONFIG = """
[plugin.{name}]
words = ["secret project"]
footer = "-- recorded"
"""


class {cls}Tests(unittest.TestCase):
    def setUp(self):
        directory = MemoryDirectory()
        self.alice = directory.add("alice", "mem:alice")
        self.bob = directory.add("bob", "mem:bob")
        self.core = make_core(CONFIG, directory=directory)
        self.core.plugins.register(plugin, "{name}")
        self.connector = MemoryConnector(self.core.api)
        self.core.connectors["memory"] = self.connector
        self.core.start_plugins()
        self.session = self.successResultOf(self.connector.login(self.bob, self.bob.handles[0]))

    def send(self, text):
        return self.successResultOf(self.core.bus.submit(Message("mem:alice", "mem:bob", text)))

    def test_a_forbidden_word_is_denied(self):
        outcome = self.send("about the Secret Project")
        self.assertTrue(outcome.rejected)
        self.assertEqual(outcome.rule, "{name}")
        self.assertEqual(self.connector.received(self.session, "im"), [])

    def test_the_footer_is_added(self):
        self.assertTrue(self.send("lunch?").delivered)
        [got] = self.connector.received(self.session, "im")
        self.assertEqual(got.text, "lunch?\\n-- recorded")
'''

_CONNECTOR_PLUGIN = '''\
"""{title}: a connector plugin for gateway, speaking a line protocol.

A client connects over TCP and sends lines::

    LOGIN user password        ->  OK LOGIN {name}:user  |  ERR ...
    MSG NETWORK:USER text      ->  OK delivered ID  |  OK queued ID  |  ERR code reason
                               <-  FROM {name}:someone text   (a message for this client)

Configured by ``[connectors.{name}]``; its keys are declared in `OPTIONS`.
"""

from twisted.application import service
from twisted.internet import protocol
from twisted.internet.defer import gatherResults
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from gateway.plugin import (
    Address,
    AddressError,
    DirectoryUnavailable,
    FileOffer,
    IConnector,
    LISTENER_OPTIONS,
    LoginThrottled,
    Message,
    Option,
    Presence,
    hookimpl,
    positive,
)

# The hook spec version this plugin is written for.
gateway_hookspec_version = 1

NETWORK = "{name}"


OPTIONS = (
    Option("listen", list, ["tcp:7788:interface=127.0.0.1"], "endpoint strings to listen on"),
    Option("login_timeout", float, 30.0, "seconds a client has to log in", check=positive),
    Option("idle_timeout", float, 600.0, "seconds without a line before a client is closed", check=positive),
) + LISTENER_OPTIONS


def render(event) -> str:
    """The line a client is shown for an event (rendered from the event the gateway hands over)."""
    if isinstance(event, Message):
        return f"FROM {{event.sender}} {{event.text}}".replace("\\r", " ").replace("\\n", " ")
    if isinstance(event, FileOffer):
        return f"FILE {{event.sender}} {{event.name}} {{event.size}}"
    if isinstance(event, Presence):
        return f"PRESENCE {{event.sender}} {{event.status.value}}"
    return f"EVENT {{event.kind}} {{event.sender}}"


class LineClient(LineOnlyReceiver, TimeoutMixin):
    """One client: login, then messages both ways."""

    delimiter = b"\\n"
    MAX_LENGTH = 4096

    def __init__(self, connector):
        self.connector = connector
        self.api = connector.api
        self.callLater = self.api.clock.callLater  # TimeoutMixin's timer, on the gateway's clock
        self.session = None

    def connectionMade(self):
        self.setTimeout(self.connector.options["login_timeout"])
        self.send("HELLO")

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self.session is not None:
            session, self.session = self.session, None
            self.connector.sessions.discard(session)
            self.api.logout(session)

    def timeoutConnection(self):
        self.send("ERR timeout")
        self.transport.loseConnection()

    def send(self, line):
        self.transport.write(line.encode("utf-8") + b"\\r\\n")

    def lineLengthExceeded(self, line):
        self.send(f"ERR too-long lines are limited to {{self.MAX_LENGTH}} bytes")
        self.transport.loseConnection()

    def lineReceived(self, line):
        try:
            verb, _, rest = line.rstrip(b"\\r").decode("utf-8").partition(" ")
        except UnicodeDecodeError:
            self.send("ERR bad-line lines are UTF-8 text")
            return
        verb = verb.upper()
        if verb == "LOGIN" and self.session is None:
            user, _, password = rest.partition(" ")
            self.login(user, password)
        elif verb == "MSG" and self.session is not None:
            to, _, text = rest.partition(" ")
            self.message(to, text, line)
        else:
            self.send("ERR bad-command LOGIN user password, then MSG NETWORK:USER text")

    def login(self, user, password):
        try:
            address = Address(NETWORK, user)
        except AddressError as e:
            self.send(f"ERR bad-user {{e}}")
            return
        source = getattr(self.transport.getPeer(), "host", None)

        def checked(identity):
            if identity is None:
                self.send("ERR auth-failed wrong user or password")
                return None
            if self.transport.disconnecting:
                return None
            return self.api.login(identity, address, self.connector.name, handler=self, source=source).addCallback(
                logged_in)

        def logged_in(session):
            self.session = session
            self.connector.sessions.add(session)
            self.setTimeout(self.connector.options["idle_timeout"])
            self.send(f"OK LOGIN {{session.address}}")

        def refused(failure):
            if failure.check(LoginThrottled):
                self.send("ERR throttled too many failed logins; try again later")
            elif failure.check(DirectoryUnavailable):
                self.send("ERR try-later the directory is unavailable")
            else:
                self.send("ERR internal login failed")

        self.api.authenticate(address, password, source=source).addCallbacks(checked, refused)

    def message(self, to, text, line=b""):
        self.resetTimeout()
        try:
            recipient = Address.parse(to)
        except AddressError as e:
            self.send(f"ERR bad-address {{e}}")
            return
        event = self.api.message(self.session.address, recipient, text)
        if self.api.capturing:
            # Native capture (``[archive] capture = "native"``): the bytes the message came in.
            self.api.capture(event.id, "received", NETWORK, line + b"\\n")
        self.api.submit(event, origin=self.connector).addCallback(self.answer)

    def answer(self, outcome):
        if outcome.rejected:
            self.send(f"ERR {{outcome.code}} {{outcome.reason}}")
        else:
            self.send(f"OK {{outcome.status.value}} {{outcome.event_id}}")


@implementer(IConnector)
class {cls}Connector(service.Service):
    """The ``[connectors.{name}]`` connector."""

    name = NETWORK
    networks = (NETWORK,)

    def __init__(self, api, options):
        self.api = api
        self.options = options  # every key of OPTIONS, checked, defaults filled in
        self.sessions = set()
        self.ports = []

    def domain_for(self, network):
        return ""

    def can_reach(self, address):
        return False

    def deliver(self, event, session):
        client = session.handler
        if client is None or client.transport is None or client.transport.disconnecting:
            # The client is gone: fail, and the gateway holds the message for later.
            raise ConnectionError(f"{{session.address}} is no longer connected")
        line = render(event)
        client.send(line)
        if self.api.capturing and event.kind == "im":
            # Native capture: the bytes the recipient was shown.
            self.api.capture(event.id, "sent", NETWORK, line.encode("utf-8") + b"\\r\\n")

    def startService(self):
        super().startService()
        factory = protocol.Factory.forProtocol(lambda: LineClient(self))
        # Under the gateway's connection limits (max_connections, max_connections_per_source).
        for description in self.options["listen"]:
            self.api.listen(description, factory, connector=NETWORK, options=self.options).addCallbacks(
                self.ports.append, self._not_listening, errbackArgs=(description,))

    def _not_listening(self, failure, description):
        self.api.log.error("{name}: cannot listen on {{where}}: {{why}}", where=description,
                           why=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        ports, self.ports = self.ports, []
        sessions = list(self.sessions)
        self.sessions.clear()
        for session in sessions:
            session.handler.session = None
            session.handler.transport.loseConnection()
        return gatherResults([port.stopListening() for port in ports] + [self.api.logout(s) for s in sessions])


@hookimpl
def gateway_register_connectors(api):
    api.register_connector(NETWORK, {cls}Connector, options=OPTIONS)
'''

_CONNECTOR_TESTS = '''\
"""{title}: the gateway's conformance kit, and the protocol on a StringTransport."""

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from gateway.testing import ConnectorConformanceMixin

from {package}.plugin import OPTIONS, LineClient, {cls}Connector


def options(**changed):
    values = {{option.name: option.default for option in OPTIONS}}
    values.update(listen=[], **changed)  # no listeners: clients come over StringTransport
    return values


class {cls}ConformanceTests(ConnectorConformanceMixin, unittest.TestCase):
    network = "{name}"
    handles = ("{name}:alice", "{name}:bob")

    def setUp(self):
        self.clock = task.Clock()
        self.clients = {{}}

    def make_connector(self, api):
        return {cls}Connector(api, options())

    def connect_client(self, connector, identity, address):
        client = LineClient(connector)
        client.makeConnection(StringTransport())
        client.dataReceived(f"LOGIN {{address.user}} secret\\n".encode())
        self.assertIsNotNone(client.session, client.transport.value())
        self.clients[client.session] = client
        return client.session

    def lines(self, session):
        return self.clients[session].transport.value().decode().split("\\r\\n")

    def client_received(self, connector, session):
        return [line.split(" ", 2)[2] for line in self.lines(session) if line.startswith("FROM ")]

    # The deeper conformance tests: what a user of this protocol does.

    def try_login(self, connector, address, password):
        client = LineClient(connector)
        client.makeConnection(StringTransport())
        client.dataReceived(f"LOGIN {{address.user}} {{password}}\\n".encode())
        if client.session is not None:
            self.clients[client.session] = client
        return client.session, client.transport.value().decode()

    def client_send(self, connector, session, recipient, text):
        client = self.clients[session]
        client.dataReceived(f"MSG {{recipient}} {{text}}\\n".encode())
        return client.transport.value().decode().split("\\r\\n")[-2]

    def drop_client(self, connector, session):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        client = self.clients[session]
        client.transport.loseConnection()
        client.connectionLost(Failure(ConnectionLost()))

    def garbage_client(self, connector, data):
        client = LineClient(connector)
        client.makeConnection(StringTransport())
        client.dataReceived(data)

    def client_presence(self, connector, session):
        from gateway.plugin import Address

        return [(Address.parse(line.split()[1]), line.split()[2])
                for line in self.lines(session) if line.startswith("PRESENCE ")]


class ProtocolTests(unittest.TestCase):
    def setUp(self):
        from gateway.testing import MemoryDirectory, make_core

        self.clock = task.Clock()
        directory = MemoryDirectory()
        directory.add("alice", "{name}:alice")
        directory.add("bob", "{name}:bob")
        self.core = make_core(directory=directory, clock=self.clock)
        self.connector = {cls}Connector(self.core.api, options())
        self.core.connectors[self.connector.name] = self.connector

    def client(self, login=None):
        client = LineClient(self.connector)
        client.makeConnection(StringTransport())
        if login:
            client.dataReceived(f"LOGIN {{login}}\\n".encode())
        return client

    def test_wrong_password(self):
        client = self.client("alice wrong")
        self.assertIn(b"ERR auth-failed", client.transport.value())
        self.assertIsNone(client.session)

    def test_message_to_another_client(self):
        alice, bob = self.client("alice secret"), self.client("bob secret")
        alice.dataReceived(b"MSG {name}:bob hello\\n")
        self.assertIn(b"OK delivered", alice.transport.value())
        self.assertIn(b"FROM {name}:alice hello", bob.transport.value())

    def test_login_timeout(self):
        client = self.client()
        self.clock.advance(31)
        self.assertTrue(client.transport.disconnecting)

    def test_bad_bytes_get_an_error_not_an_exception(self):
        client = self.client()
        client.dataReceived(b"\\xff\\xfe\\x00garbage\\n" + b"x" * 5000 + b"\\n")
        self.assertIn(b"ERR", client.transport.value())
'''

_README = '''\
{title}
{underline}

A {kind} plugin for gateway, made by ``gatewayctl plugin new {name} --kind {kind}``.

Install it next to the gateway and run its tests::

    pip install .
    python -m twisted.trial {package}

{usage}
'''

_HOOK_USAGE = '''\
Enable it in the gateway's config (it is loaded as plugin ``{name}``; list
it with ``gatewayctl plugins``)::

    [plugin.{name}]
    words = ["secret project"]
    footer = "-- recorded"
'''

_CONNECTOR_USAGE = '''\
Enable it in the gateway's config (``gatewayctl config check`` checks the
keys), then talk to it with netcat::

    [connectors.{name}]
    listen = ["tcp:7788:interface=127.0.0.1"]

    $ nc 127.0.0.1 7788
    LOGIN alice secret
    MSG xmpp:bob@localhost hello
'''


def new_plugin(name: str, kind: str, folder: str) -> list:
    """Write the distribution of plugin ``name`` (``connector`` or ``hook``) under ``folder``; the files written."""
    if not re.fullmatch(r"[a-z][a-z0-9]{1,30}", name):
        raise ScaffoldError(f"{name!r}: a plugin name is 2 to 31 lower-case letters and digits, starting with a letter")
    if kind not in ("connector", "hook"):
        raise ScaffoldError(f"kind must be 'connector' or 'hook', not {kind!r}")
    root = os.path.join(folder, f"gateway-{name}")
    if os.path.exists(root):
        raise ScaffoldError(f"{root} exists already")
    package = f"gateway_{name}"
    values = dict(
        name=name, package=package, cls=name.capitalize(), title=f"gateway-{name}",
        description=f"A {kind} plugin for gateway",
        kind=kind,
    )
    values["underline"] = "=" * len(values["title"])
    usage = (_CONNECTOR_USAGE if kind == "connector" else _HOOK_USAGE).format(**values)
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.rst": _README,
        f"{package}/__init__.py": '"""{title}."""\n',
        f"{package}/plugin.py": _CONNECTOR_PLUGIN if kind == "connector" else _HOOK_PLUGIN,
        f"{package}/test/__init__.py": "",
        f"{package}/test/test_plugin.py": _CONNECTOR_TESTS if kind == "connector" else _HOOK_TESTS,
    }
    written = []
    for relative, template in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(template.format(usage=textwrap.dedent(usage), **values))
        written.append(path)
    return written
