"""
Every hook a gateway plugin may implement, documented for third parties.

A plugin is a module or object whose functions are marked with
``gateway.plugin.hookimpl`` (also ``from gateway import hookimpl``) and
whose distribution declares it under the setuptools entry-point group
``gateway``::

    [options.entry_points]
    gateway =
        acme_dlp = acme_dlp.plugin

Hooks are called by keyword: an implementation may accept fewer arguments
than the spec lists, so new arguments can be added without breaking it.
Every hook receives, or can keep from ``gateway_startup``, the one facade
`gateway.api.GatewayApi`; plugins never see the bus or a database session.

Hook spec version: 3 (``gateway.plugin.HOOKSPEC_VERSION``; 2 added `gateway_wall_breach`, 3 rooms:
the facade's room methods and `gateway.model.ChatEvent`'s ``nick`` and ``members``). Specs only
grow new optional arguments within a version. A plugin that needs a newer
version says so with an attribute ``gateway_hookspec_version = N`` on the
module or object; an older gateway then refuses to start with a message
naming the plugin and its distribution, instead of failing later.
"""

import pluggy

HOOKSPEC_VERSION = 3

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


# -- start-up and shut-down ------------------------------------------------


@hookspec(historic=True)
def gateway_register_connectors(api):
    """
    Register connector factories (new protocols).

    Called once at start-up, before any connector is built; historic, so a
    plugin registered later is called too. Implementations call::

        api.register_connector("oscar", factory)

    where ``factory(api, config)`` returns an object providing
    `gateway.interfaces.IConnector` and ``twisted.application.service.IService``;
    ``config`` is the connector's ``[connectors.NAME]`` table from the config
    file as a dict (the connector validates it and raises
    `gateway.config.ConfigError` naming the key). A connector is built only
    when its table exists and does not say ``enabled = false``.

    Return value: ignored. May not return a Deferred.
    """


@hookspec(historic=True)
def gateway_startup(api):
    """
    The gateway is starting: keep ``api`` for later use.

    Called once, after the configuration is read and before listeners open;
    historic. ``api.plugin_config(NAME)`` gives the plugin's own
    ``[plugin.NAME]`` table.

    Return value: ignored. May not return a Deferred.
    """


@hookspec
def gateway_shutdown(api):
    """
    The gateway is stopping, after connectors closed their listeners.

    Return value: None or a Deferred; the gateway waits for it (bounded by
    the hook timeout) before the archive is flushed.
    """


# -- the one path ----------------------------------------------------------


@hookspec
def gateway_policy_check(event, sender, recipient):
    """
    Decide whether ``event`` may pass.

    Called for every event that the built-in rules allowed, on every
    implementation (all are asked, none can stop the others from being
    asked). Arguments: ``event`` (a `gateway.model` event), ``sender`` and
    ``recipient``: `gateway.model.Identity` of each side, or None for a
    person the directory does not know (a foreign user).

    Return value: a `gateway.model.Verdict` (``Verdict.allow()`` or
    ``Verdict.deny(reason)``), None to abstain, or a Deferred firing with
    one of those. The gateway folds the answers: any deny wins over every
    allow. An exception, a Deferred that fails or does not fire within
    ``[policy] hook_timeout`` seconds, or any other return value counts as
    a deny (reason names the plugin), is logged with the plugin name and
    counted in ``gateway_plugin_errors_total``.
    """


@hookspec
def gateway_transform(event):
    """
    Change an allowed event before it is archived and delivered.

    Called in plugin order, each with the event the previous one returned.
    Return a new event of the same type (``attrs.evolve(event, text=...)``;
    events are frozen) or None to leave it unchanged. The id, sender and
    recipient must stay the same. An exception, a changed id or addresses,
    or another type rejects the event (reason names the plugin), so that
    a broken redaction never lets an unredacted message through.

    May return a Deferred of either answer (for a redaction that asks a
    service of its own): it is bounded by ``[policy] hook_timeout`` like a
    policy check, and a failure or a time-out rejects the event. The
    message's text and rich text are kept consistent after each hook (a
    hook that changes only ``text`` replaces ``html`` with that text; new
    ``html`` is sanitized and the text derived from it).

    When any hook changed the event, the archive keeps both the event as
    its sender sent it and as it was delivered, with the names of the
    hooks that changed it, in order (``gatewayctl archive show``).
    """


@hookspec
def gateway_delivered(event, outcome):
    """
    ``event`` was delivered or queued for an offline recipient.

    ``outcome`` is a `gateway.model.Outcome`. Called after the archive has
    the event. Return value: ignored; exceptions are logged and counted.
    May not return a Deferred (start your own work and return).
    """


@hookspec
def gateway_rejected(event, outcome):
    """
    ``event`` was rejected; ``outcome.reason`` and ``outcome.rule`` say why.

    Called after the rejection was recorded. Return value: ignored;
    exceptions are logged and counted. May not return a Deferred.
    """


@hookspec
def gateway_wall_breach(event, wall, sender, recipient):
    """
    Someone tried to reach across an ethical wall (``[[compliance.wall]]``
    named ``wall``): ``event`` was refused with the wall's notice and
    archived as rejected. ``sender`` and ``recipient`` are the two people's
    directory ids, whatever networks and aliases they used. For a vendor
    plugin that notifies compliance officers. Return value: ignored;
    exceptions are logged and counted. May not return a Deferred.

    Added in version 2.
    """


@hookspec
def gateway_session_changed(session, online):
    """
    A person logged in (``online`` True) or out on some connector.

    ``session`` is a `gateway.path.sessions.Session`. Return value: ignored.
    """
