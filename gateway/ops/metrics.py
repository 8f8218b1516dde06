"""Prometheus metrics of one gateway process, in a registry of its own."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily


class _Callbacks:
    """A collector that reads gauges from callables at scrape time."""

    def __init__(self):
        self.gauges = []  # (name, doc, labelname or None, fn)

    def collect(self):
        for name, doc, label, fn in self.gauges:
            if label is None:
                yield GaugeMetricFamily(name, doc, value=fn())
            else:
                family = GaugeMetricFamily(name, doc, labels=[label])
                for key, value in sorted(fn().items()):
                    family.add_metric([key], value)
                yield family


class Metrics:
    """The gateway's counters; hot-path children are cached, not looked up per event."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "gateway_events", "Events that crossed the bus, by kind and outcome",
            ["kind", "outcome"], registry=r,
        )
        self.rejections = Counter(
            "gateway_rejections", "Rejected events by cause and rule",
            ["code", "rule"], registry=r,
        )
        self.plugin_errors = Counter(
            "gateway_plugin_errors", "Plugin hooks that raised, timed out or answered garbage",
            ["plugin", "hook"], registry=r,
        )
        self.archive_rows = Counter(
            "gateway_archive_rows", "Rows written to the archive database", registry=r
        )
        self.archive_spooled_rows = Counter(
            "gateway_archive_spooled", "Rows written to the local spool instead", registry=r
        )
        self.archive_failures = Counter(
            "gateway_archive_failures", "Archive batches that the database refused", registry=r
        )
        self.archive_latency = Histogram(
            "gateway_archive_write_seconds", "Time to write one archive batch", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.connections_refused = Counter(
            "gateway_connections_refused", "Connections refused over a listener's limits", ["listener", "reason"],
            registry=r,
        )
        self.admin_refusals = Counter(
            "gateway_admin_refused", "Admin API requests refused, by reason", ["reason"], registry=r,
        )
        self.logins_throttled = Counter(
            "gateway_logins_throttled",
            "Logins refused before any password check, by the limit that refused them "
            "(account-address, address, account, queue)",
            ["limit"], registry=r,
        )
        self.unrecorded_events = Counter(
            "gateway_archive_unrecorded", "Events delivered without an archive row ([archive] unrecorded = "
            "\"deliver\" while the archive could neither commit nor spool)", ["kind"], registry=r,
        )
        self.wall_breaches = Counter(
            "gateway_wall_breaches", "Events refused by an ethical wall, by wall", ["wall"], registry=r,
        )
        self._callbacks = _Callbacks()
        r.register(self._callbacks)
        self._event_children = {}

    def gauge(self, name, doc, fn, label=None):
        """Export ``fn()`` (a number, or a dict label value -> number) as a gauge."""
        self._callbacks.gauges.append((name, doc, label, fn))

    def event(self, kind, outcome):
        key = (kind, outcome.status)
        child = self._event_children.get(key)
        if child is None:
            child = self._event_children[key] = self.events.labels(kind, outcome.status.value)
        child.inc()
        if outcome.rejected:
            self.rejections.labels(outcome.code or "unknown", outcome.rule or "").inc()

    def connection_refused(self, listener, reason):
        self.connections_refused.labels(listener, reason).inc()

    def admin_refused(self, reason):
        self.admin_refusals.labels(reason).inc()

    def login_throttled(self, limit):
        self.logins_throttled.labels(limit).inc()

    def unrecorded(self, kind):
        self.unrecorded_events.labels(kind).inc()

    def wall_breach(self, wall):
        self.wall_breaches.labels(wall).inc()

    def plugin_error(self, plugin, hook):
        self.plugin_errors.labels(plugin, hook).inc()

    # Called by the archive writer (from its thread; prometheus_client is thread-safe).
    def archive_written(self, rows, seconds):
        self.archive_rows.inc(rows)
        self.archive_latency.observe(seconds)

    def archive_spooled(self, rows):
        self.archive_spooled_rows.inc(rows)

    def archive_failed(self):
        self.archive_failures.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
