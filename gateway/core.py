"""Core: the assembled parts of one gateway process, and how connectors are built."""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface.verify import verifyObject

from gateway.api import GatewayApi
from gateway.path.bus import Bus
from gateway.config import ConfigError
from gateway.options import read_options
from gateway.interfaces import IConnector
from gateway.ops.metrics import Metrics
from gateway.plugins import PluginLoadError
from gateway.compliance.walls import Walls
from gateway.policy.rules import PolicyEngine
from gateway.path.router import Router
from gateway.path.tickets import LocalTickets
from gateway.path.sessions import SessionRegistry
from gateway.path.throttle import FairQueue, LoginThrottle



def _located(error, path):
    """A connector's `ConfigError` naming a key, with the config file and the key's line."""
    from gateway.options import _line

    message = str(error)
    prefix = f"{error.key}: " if "." in error.key else f"[{error.key}] "
    if message.startswith(f"{error.path}: ") and error.path:
        message = message[len(error.path) + 2:]
    if message.startswith(prefix):
        message = message[len(prefix):]
    section, _, key = error.key.rpartition(".")
    return ConfigError(message, path, error.key, _line(path, section, key) if section else None)


def _admitted():
    return None


def _here(connector):
    return None


class Core:
    """
    The assembled parts of one gateway process. Built once; only it holds
    the clock, the database and the plugin manager. Plugins see it only
    through `GatewayApi`.
    """

    log = Logger()

    def __init__(self, config, reactor, *, plugins, directory, archive, offline, metrics=None):
        self.config = config
        self.reactor = self.clock = reactor
        self.node = config.gateway.node
        self.metrics = metrics or Metrics()
        self.plugins = plugins
        self.directory = directory
        self.archive = archive
        self.offline = offline
        self.sessions = SessionRegistry()
        self.connectors = {}
        self.connector_factories = {}
        self.connector_options = {}  # name -> declared options (gateway.options.Option)
        self.listeners = []  # gateway.path.limits.LimitedFactory of each listener opened through the facade
        self.admission = _admitted  # in a cluster, the registry's: whether this node takes new connections
        self.placement = _here  # in a cluster, the registry's: where a new login should go
        # What one connection of a login leaves for the next to take (in a cluster, the registry's, in Redis).
        self.tickets = LocalTickets(reactor)
        self.walls = Walls(config.compliance.walls, breached=self._wall_breached)
        self.notices = None  # the built-in notices plugin, when [[compliance.notice]] are configured
        self.policy = PolicyEngine(config.policy, reactor, walls=self.walls,
                                   fail_closed_parties=config.archive.fail_closed_parties)
        self.throttle = LoginThrottle(
            reactor, limit=config.directory.login_failures, window=config.directory.login_window,
            per_source=config.directory.login_failures_per_source,
            per_account=config.directory.login_failures_per_account,
        )
        # Password checks one at a time (the directory hashes in one thread), fairly by source.
        self.login_queue = FairQueue(
            concurrency=1, per_source=config.directory.login_queue_per_source, total=config.directory.login_queue,
        )
        self.router = Router(directory, self.sessions, self.connectors)
        kinds = {"im", "chat", "file", "info", "access"}
        if config.archive.presence:
            kinds.add("presence")
        if config.archive.typing:
            kinds.add("typing")
        self.bus = Bus(
            clock=reactor,
            router=self.router,
            policy=self.policy,
            plugins=plugins,
            archive=archive,
            offline=offline,
            sessions=self.sessions,
            metrics=self.metrics,
            fail_closed=config.archive.fail_closed,
            durable=config.archive.durable,
            unrecorded=config.archive.unrecorded,
            hook_timeout=config.policy.hook_timeout,
            archive_kinds=kinds,
            offline_enabled=config.offline.enabled,
            node=self.node,
        )
        from gateway.rooms import Rooms

        self.rooms = Rooms(config.rooms, reactor, self.connectors, walls=self.walls, metrics=self.metrics)
        self.rooms.bus, self.rooms.policy = self.bus, self.policy
        self.router.rooms = self.policy.rooms = self.rooms
        self.api = GatewayApi(self)
        self.metrics.gauge(
            "gateway_sessions", "Logged-in sessions by connector",
            self.sessions.count_by_connector, label="connector",
        )
        self.metrics.gauge(
            "gateway_connections", "Open connections by listener",
            lambda: {f.listener: f.open for f in self.listeners}, label="listener",
        )
        for name, text, attribute in (
            ("gateway_archive_queue_depth", "Archive records waiting to be written", "queue_depth"),
            ("gateway_archive_spool_rows", "Archive rows waiting in the spool for the database", "spooled"),
            ("gateway_archive_spool_bytes", "Bytes the archive spool takes (bounded by spool_max_mb)", "spool_bytes"),
        ):
            # Read when scraped (an archive without a spool shows 0).
            self.metrics.gauge(name, text, lambda attribute=attribute: getattr(archive, attribute, lambda: 0)())

    def _wall_breached(self, event, wall, sender, recipient):
        """An attempt across an ethical wall: counted, logged, and told to the ``gateway_wall_breach`` hooks."""
        self.metrics.wall_breach(wall.name)
        self.log.warn("ethical wall {wall}: {kind} from {sender} to {recipient} refused", wall=wall.name,
                      kind=event.kind, sender=str(event.sender), recipient=str(event.recipient))
        kwargs = {"event": event, "wall": wall.name, "sender": sender.identity.id, "recipient": recipient.identity.id}
        for name, function, argnames in self.plugins.implementations("gateway_wall_breach"):
            try:
                function(**{a: kwargs[a] for a in argnames})
            except Exception:
                self.log.failure("gateway_wall_breach plugin {plugin} raised", plugin=name)
                self.metrics.plugin_error(name, "gateway_wall_breach")

    def register_connector_factory(self, name, factory, options=None):
        if name in self.connector_factories:
            raise PluginLoadError(f"two plugins offer a connector called {name!r}")
        self.connector_factories[name] = factory
        if options is not None:
            self.connector_options[name] = tuple(options)

    def start_plugins(self):
        """Registration hooks (historic), then build the configured connectors."""
        if self.config.compliance.notices and self.notices is None:
            from gateway.compliance.notices import Notices

            self.notices = Notices(self.api, self.config.compliance.notices, wait=self.config.policy.hook_timeout / 2)
            self.plugins.register(self.notices, "compliance-notices")
        self.plugins.call_historic("gateway_register_connectors", api=self.api)
        self.plugins.call_historic("gateway_startup", api=self.api)
        self.bus.refresh_hooks()
        for name, table in self.config.connectors.items():
            if table.get("enabled", True) is False:
                continue
            factory = self.connector_factories.get(name)
            if factory is None:
                raise ConfigError(
                    f"no installed plugin provides a connector called {name!r}; "
                    f"installed connectors: {', '.join(sorted(self.connector_factories)) or 'none'}",
                    self.config.path,
                    f"connectors.{name}",
                )
            options = {k: v for k, v in table.items() if k != "enabled"}
            if name in self.connector_options:
                options = read_options(name, options, self.connector_options[name], self.config.path)
            try:
                connector = factory(self.api, options)
            except ConfigError as e:
                if e.key:  # it names its key already: give it the file and line
                    raise _located(e, self.config.path) from None
                raise ConfigError(str(e), self.config.path, f"connectors.{name}") from None
            except Exception as e:
                raise PluginLoadError(
                    f"connector {name!r} could not be built: {type(e).__name__}: {e}"
                ) from e
            try:
                verifyObject(IConnector, connector)
            except Exception as e:
                raise PluginLoadError(f"connector {name!r} does not provide IConnector: {e}") from None
            self.connectors[name] = connector
        self.router.forget_connectors()
        return list(self.connectors.values())

    def network_domains(self, extra=()):
        """
        Network -> the domain of its handles: those of ``extra`` (``NETWORK``
        or ``NETWORK@DOMAIN``), then every configured connector's networks
        with the domain the connector says.
        """
        domains = {}
        for entry in extra:
            network, _, domain = entry.partition("@")
            domains[network] = domain
        for connector in self.connectors.values():
            for network in connector.networks:
                domains[network] = connector.domain_for(network)
        return domains
