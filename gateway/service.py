"""GatewayService: assembles the parts from the config and runs them as one MultiService."""

from __future__ import annotations

import gc
import os
import signal

from twisted.application import service, strports
from twisted.internet import task
from twisted.internet.defer import DeferredList, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from gateway import config as config_module
from gateway.storage.archive.process import ArchiveProcess
from gateway.storage.archive.spool import Spool
from gateway.storage.archive.store import ArchiveStore
from gateway.storage.archive.writer import ArchiveWriter, OfflineStore
from gateway.config import ConfigError
from gateway.compliance.writer import chained
from gateway.storage.db import create_engine, migrate
from gateway.storage.dbthread import DatabaseThread
from gateway.directory.sql import DirectoryStore, SQLDirectory, ensure_demo_users
from gateway.directory.hashqueue import HashQueue
from gateway.ops.metrics import Metrics
from gateway.ops.operators import OperatorStore
from gateway.core import Core
from gateway.plugins import Plugins

# Allocations between two young-generation collections (Python's default is 700).
# With thousands of sessions, objects a message makes live a few milliseconds,
# which at the default spans several young collections: they were promoted
# and set off a full collection every few seconds, each pausing the reactor
# for 0.3 to 1 s (measured in bench/soak.py with 10,000 sessions at 500 msg/s:
# 36 full collections in 4 minutes; with this threshold, none).
YOUNG_THRESHOLD = 50_000


def settle():
    """
    Collect garbage, then freeze every object left out of later collections,
    and collect the young generation less often (`YOUNG_THRESHOLD`).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def make_directory(config, store, dbthread, reactor, password_thread=None, hash_queue=None):
    """The directory ``[directory] backend`` names, over the SQL store."""
    options = dict(cache_size=config.directory.cache_size, cache_ttl=config.directory.cache_ttl,
                   password_thread=password_thread, hash_queue=hash_queue)
    if config.directory.backend == "ldap":
        from gateway.directory.ldap import LDAPDirectory, LDAPServer

        server = LDAPServer(config.directory.ldap, reactor)
        return LDAPDirectory(config.directory.ldap, store, dbthread, reactor, server, **options)
    return SQLDirectory(store, dbthread, reactor, **options)


class GatewayService(service.MultiService):
    """The whole gateway as one Twisted service (what ``twistd gateway`` runs)."""

    log = Logger()

    def __init__(self, config, reactor, extra_plugins=()):
        """``extra_plugins``: (name, plugin) pairs registered beside the entry points (embedding, tests)."""
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._build(extra_plugins)

    def _build(self, extra_plugins):
        config = self.config
        os.makedirs(config.data_dir, exist_ok=True)
        plugins = Plugins(disabled=config.plugins.disabled, trace=config.plugins.trace)
        plugins.load_entry_points()
        plugins.load_paths([config.resolve(path) for path in config.plugins.paths])
        for name, plugin in extra_plugins:
            plugins.register(plugin, name)

        self.engine = create_engine(config.database_url)
        migrate(self.engine)  # raises DatabaseError with what to do
        metrics = Metrics()

        self.directory_store = DirectoryStore(self.engine, clock_seconds=self.reactor.seconds)
        self.directory_thread = DatabaseThread(self.reactor, name="gateway-directory")
        # scrypt takes ~0.1 s: password checks get their own thread so look-ups never wait behind them.
        self.password_thread = DatabaseThread(self.reactor, name="gateway-passwords")
        # ... one at a time (that thread runs one), taken round-robin by client address, bounded.
        hash_queue = HashQueue(
            concurrency=1, per_source=config.directory.login_queue_per_source, total=config.directory.login_queue
        )
        directory = make_directory(
            config, self.directory_store, self.directory_thread, self.reactor, self.password_thread, hash_queue
        )
        archive_store = self.archive_store = ArchiveStore(self.engine, node=config.gateway.node)
        self.operators = OperatorStore(self.engine)
        if config.archive.writer == "process":
            self.archive = ArchiveProcess(
                self.reactor,
                dict(
                    url=config.database_url,
                    node=config.gateway.node,
                    spool_dir=config.spool_dir,
                    spool_max_bytes=config.archive.spool_max_mb * 1024 * 1024,
                    batch_size=config.archive.batch_size,
                    batch_wait=config.archive.batch_wait,
                    queue_max=config.archive.queue_max,
                    retry_interval=config.archive.retry_interval,
                    journal=config.archive.journal,
                    chain=config.chain_options,
                ),
                metrics=metrics,
                queue_max=config.archive.queue_max,
            )
        else:
            self.archive = ArchiveWriter(
                chained(ArchiveStore(self.engine, node=config.gateway.node), config.chain_options),
                self.reactor,
                Spool(config.spool_dir, max_bytes=config.archive.spool_max_mb * 1024 * 1024),
                batch_size=config.archive.batch_size,
                batch_wait=config.archive.batch_wait,
                queue_max=config.archive.queue_max,
                retry_interval=config.archive.retry_interval,
                metrics=metrics,
            )
        self.offline_thread = DatabaseThread(self.reactor, name="gateway-offline")
        offline = OfflineStore(archive_store, self.offline_thread, limit=config.offline.max_per_person)
        self.core = Core(
            config, self.reactor,
            plugins=plugins, directory=directory, archive=self.archive,
            offline=offline, metrics=metrics,
        )
        # Rooms an operator made: read once here (before the reactor runs), written from the directory's thread.
        from gateway.rooms import RoomStore

        self.core.rooms.store, self.core.rooms.thread = RoomStore(self.engine), self.directory_thread
        self.core.rooms.load(self.core.rooms.store.load())
        metrics.gauge("gateway_rooms", "Rooms and the people in them",
                      lambda: {"rooms": len(self.core.rooms.rooms),
                               "members": sum(len(r.members) for r in self.core.rooms.rooms.values())}, label="count")
        metrics.gauge("gateway_directory_cache_hits", "Directory cache hits", lambda: directory.hits)
        metrics.gauge("gateway_directory_cache_misses", "Directory cache misses", lambda: directory.misses)
        metrics.gauge("gateway_password_checks_waiting", "Password checks waiting for their turn",
                      lambda: hash_queue.depth() + self.core.login_queue.depth())
        metrics.gauge("gateway_password_checks_running", "Password checks running",
                      lambda: hash_queue.running() + self.core.login_queue.running())
        self.registry = self.relay = None
        if config.cluster.redis:
            # Imported only here: a node on its own loads nothing of the cluster.
            from gateway.cluster import secret
            from gateway.cluster.registry import NodeRegistry

            try:
                self.cluster_secret = secret.load(config.resolve(config.cluster.secret_file))
            except secret.SecretError as e:
                raise ConfigError(str(e), config.path, "cluster.secret_file") from None

            self.registry = NodeRegistry(
                self.reactor, config.cluster.redis, config.gateway.node, heartbeat=config.cluster.heartbeat,
                capacity=config.cluster.max_sessions, prefix=config.cluster.prefix, listeners=self._listeners,
                advertise=config.cluster.advertise, secret=self.cluster_secret,
            )
            plugins.register(self.registry, "cluster-registry")
            self.core.admission = self.registry.admission
            self.core.placement = self.registry.placement
            self.core.tickets = self.registry
            self.registry.on_drain = self._move_sessions
        connectors = self.core.start_plugins()
        if config.directory.demo_users:
            created = ensure_demo_users(self.directory_store,
                                        self.core.network_domains(config.directory.demo_networks))
            if created:
                self.log.warn(
                    "DEMO ONLY: created users {users} with password 'secret'; "
                    "set [directory] demo_users = false for real use",
                    users=", ".join(created),
                )
        self.archive.setServiceParent(self)
        for connector in connectors:
            connector.setServiceParent(self)
        if config.admin.listen:
            # Imported only here: twisted.web is 4 MB of a process that does not listen for it.
            from gateway.ops.admin import admin_site

            strports.service(config.admin.listen, admin_site(self)).setServiceParent(self)
        if config.archive.retention and config.archive.purge_interval > 0:
            Purges(self, config.archive.purge_interval * 3600).setServiceParent(self)
        if self.registry is not None:
            from gateway.cluster.streams import Relay

            self.registry.setServiceParent(self)
            self.relay = Relay(self.reactor, config.cluster.redis, self.registry, self.core.bus, self.cluster_secret)
            relay = self.relay
            metrics.gauge(
                "gateway_cluster_entries", "Stream entries so far: handed (to other nodes), received (delivered "
                "here), duplicates (not delivered again), claimed (taken over from stopped nodes), refused (not "
                "signed with the cluster's secret, meant for another node, or too old)",
                lambda: {what: getattr(relay, what) for what in ("handed", "received", "duplicates", "claimed",
                                                                 "refused")}, label="outcome")
            self.registry.take_over = self.relay.take_over
            self.registry.gone = self.relay.gone
            self.core.bus.cluster = self.relay
            self.relay.setServiceParent(self)

    def _move_sessions(self):
        """
        The node is draining: each session whose connector can end it in
        its protocol's terms (the optional ``disconnect(session, reason)``
        of `IConnector`) is ended, so that its client connects to another
        node; the others stay until they log out. How many were asked.
        """
        moved = 0
        for session in self.core.sessions.all():
            disconnect = getattr(self.core.connectors.get(session.connector), "disconnect", None)
            if disconnect is None:
                continue
            try:
                disconnect(session, "this node is being drained; connect again")
                moved += 1
            except Exception:
                self.log.failure("cluster: {connector} could not end {session}", connector=session.connector,
                                 session=repr(session))
        return moved

    def _listeners(self):
        """Connector name -> the endpoint strings it listens on (for the cluster's registry)."""
        out = {}
        for limited in self.core.listeners:
            out.setdefault(limited.owner, []).append(limited.endpoint)
        return out

    @property
    def api(self):
        return self.core.api

    def startService(self):
        self.started = self.reactor.seconds()
        self.directory_thread.start()
        self.password_thread.start()
        self.offline_thread.start()
        super().startService()
        self._previous_hup = None
        if hasattr(signal, "SIGHUP"):
            try:
                self._previous_hup = signal.signal(
                    signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload)
                )
            except ValueError:  # not the main thread (tests)
                pass
        # Start-up's objects (modules, config, plugins, caches) go to the
        # collector's permanent generation: full collections then scan only
        # what the traffic makes (measured: about a third less CPU per SIP
        # MESSAGE). Objects are still freed by their reference counts. Done
        # here, before any client is served, as the collection pauses.
        settle()
        self.log.info(
            "gateway node {node} started: connectors {connectors}, database {db}",
            node=self.config.gateway.node,
            connectors=", ".join(self.core.connectors) or "none",
            db=self.engine.url.render_as_string(hide_password=True),
        )

    def reload(self):
        """Re-read the config file's rules (SIGHUP); sessions stay as they are."""
        try:
            fresh = config_module.load(self.config.path)
        except ConfigError as e:
            self.log.error("reload refused, keeping the old rules: {error}", error=str(e))
            return False
        self.core.policy.load(fresh.policy)
        self.core.walls.load(fresh.compliance.walls)
        if self.core.notices is not None:
            self.core.notices.load(fresh.compliance.notices)
        self.directory_invalidate()
        self.log.info("reloaded {n} policy rules and {walls} ethical walls from {path}", n=len(fresh.policy.rules),
                      walls=len(fresh.compliance.walls), path=fresh.path)
        return True

    def find_operator(self, token):
        """Fire with the admin API's `gateway.ops.operators.Operator` whose token this is, or None."""
        return self.directory_thread.call(self.operators.find, token)

    def search(self, query, limit):
        """Fire with the archived events matching ``query`` (`ArchiveStore.search`'s filters), at most ``limit``."""
        return self.offline_thread.call(lambda: self.archive_store.search(limit=limit, **query))

    def directory_invalidate(self):
        invalidate = getattr(self.core.directory, "invalidate", None)
        if invalidate is not None:
            invalidate()

    @inlineCallbacks
    def stopService(self):
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
        # Connectors first (they log their sessions out), the archive last.
        for child in reversed(list(self)):
            if child is not self.archive and child.running:
                yield maybeDeferred(child.stopService)
        results = self.core.plugins.hook.gateway_shutdown(api=self.core.api)
        yield DeferredList(
            [maybeDeferred(lambda r=r: r) for r in results], consumeErrors=True
        )
        service.Service.stopService(self)
        yield maybeDeferred(self.archive.stopService)  # flushes the queue
        yield self.offline_thread.stop()
        yield self.directory_thread.stop()
        yield self.password_thread.stop()
        close = getattr(self.core.directory, "server", None)
        if close is not None:
            close.close()
        self.engine.dispose()
        self.log.info("gateway node {node} stopped", node=self.config.gateway.node)


class Purges(service.Service):
    """
    The scheduled purge of expired archive rows (``[[archive.retention]]``,
    every ``purge_interval`` hours, the first one interval after the start),
    in a database thread; the same as ``gatewayctl archive purge``.
    """

    log = Logger()

    def __init__(self, gateway, interval):
        self.gateway = gateway
        self.interval = interval
        self.loop = None

    def startService(self):
        super().startService()
        self.loop = task.LoopingCall(self.run)
        self.loop.clock = self.gateway.reactor
        self.loop.start(self.interval, now=False).addErrback(
            lambda failure: self.log.failure("archive purges stopped", failure))

    def stopService(self):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        return super().stopService()

    def run(self):
        from gateway.compliance.retention import purge, records_settings

        config = self.gateway.config
        chain, lock = records_settings(config)
        d = self.gateway.offline_thread.call(purge, self.gateway.engine, config.gateway.node, config.archive.retention,
                                             chain, lock_path=lock)
        d.addCallbacks(self._done, lambda failure: self.log.failure("archive purge failed", failure))
        return None

    def _done(self, report):
        if report["purge"]:
            self.log.info("archive purge {purge}: {rows} rows removed ({expired}); {held} expired rows held",
                          purge=report["purge"], rows=report["rows"], expired=report["expired"], held=report["held"])
