"""
The public door: everything a connector or hook plugin may use, and nothing else.

Plugins import from here (and from `gateway.testing` in their tests)::

    from gateway.plugin import hookimpl, Message, Verdict

Every name below is stable within a hook spec version
(`HOOKSPEC_VERSION`): a renamed one keeps working, with a deprecation
warning, for at least one release. Every other ``gateway.*`` module is
private to the gateway and may change without notice; the bundled plugins
under ``plugins/`` use only this module, so they are the examples to copy.

What is here, by what it is for:

Marking hooks
    `hookimpl`, `HOOKSPEC_VERSION`; the hooks themselves are documented in
    `gateway.hookspecs`.
The facade
    `GatewayApi`: the one object every hook receives (or keeps from
    ``gateway_startup``); `Session`: a logged-in session it hands back.
Values that cross the one path
    `Address` (and `AddressError`), the events `Message`, `Presence`,
    `Typing`, `ChatEvent`, `FileOffer`, `Profile` (kind ``info``) and
    `Access`, with `PresenceStatus`; `Identity` and `Contact` from the
    directory; `Verdict` (a policy answer) and `Outcome` with
    `OutcomeStatus` and the `OUTCOME_CODES` a connector maps onto its
    protocol's errors.
Connectors
    `IConnector` (what a connector provides), `DirectoryUnavailable` and
    `LoginThrottled` (what a login may fail with), `Option` (declare the
    keys of a ``[connectors.NAME]`` table once, for
    ``api.register_connector(name, factory, options=...)``) with its
    check `positive` and the `LISTENER_OPTIONS` every listening connector
    adds to its own; `read_options` checks a table against them (for a
    connector built directly, as in its tests); `connector_option` and
    `ConfigError` for a table read by hand.
Renderings
    `sanitize`, `text_of`, `html_of`, `xhtml_of`: the rich-text rules the
    path applies, for a connector that renders its own formats
    (`xhtml_of` for formats that carry rich text as XML).
Login secrets
    `parse_scram`, `digest_ha1`: the formats of the secrets
    `GatewayApi.secret` returns, for protocols that never send the password.
"""

from gateway.api import GatewayApi
from gateway.config import ConfigError, connector_option
from gateway.path.content import html_of, sanitize, text_of, xhtml_of
from gateway.directory.secrets import digest_ha1, parse_scram
from gateway.hookspecs import HOOKSPEC_VERSION, hookimpl
from gateway.interfaces import DirectoryUnavailable, IConnector, LoginThrottled
from gateway.options import LISTENER_OPTIONS, Option, positive, read_options
from gateway.model import (
    Access,
    Address,
    AddressError,
    ChatEvent,
    Contact,
    FileOffer,
    Identity,
    Message,
    Outcome,
    OutcomeStatus,
    Presence,
    PresenceStatus,
    Profile,
    Typing,
    Verdict,
    new_event_id,
)
from gateway.path.sessions import Session

# The ``code`` of a rejected `Outcome`: why, in a word a connector maps
# onto its protocol's own error.
OUTCOME_CODES = {
    "policy": "a policy rule or plugin denied it (``rule`` says which)",
    "unknown-recipient": "nobody is known by that address",
    "offline": "the recipient is offline and it could not be held (not a message, or offline storage is off)",
    "offline-full": "the recipient is offline and already has as many held messages as allowed",
    "archive-unavailable": "fail_closed: the archive could not make it durable",
    "delivery-failed": "a connector could not hand it over",
    "directory-unavailable": "the directory could not tell who is who now; try again later",
    "transform": "a transform plugin failed, timed out or returned garbage",
    "internal": "an error in the gateway (logged)",
    "unsupported": "the connector cannot carry this (see `GatewayApi.refuse`)",
}

__all__ = [
    "HOOKSPEC_VERSION",
    "OUTCOME_CODES",
    "Access",
    "Address",
    "AddressError",
    "ChatEvent",
    "ConfigError",
    "Contact",
    "DirectoryUnavailable",
    "FileOffer",
    "GatewayApi",
    "IConnector",
    "Identity",
    "LISTENER_OPTIONS",
    "LoginThrottled",
    "Message",
    "Option",
    "Outcome",
    "OutcomeStatus",
    "Presence",
    "PresenceStatus",
    "Profile",
    "Session",
    "Typing",
    "Verdict",
    "connector_option",
    "digest_ha1",
    "hookimpl",
    "html_of",
    "new_event_id",
    "parse_scram",
    "positive",
    "read_options",
    "sanitize",
    "text_of",
    "xhtml_of",
]
