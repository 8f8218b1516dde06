"""Connector options declared once: checked like the core's keys, with defaults, help and line numbers."""

from __future__ import annotations

from typing import Any, Callable, Optional

import attrs

from gateway.config import _TYPE_NAMES, ConfigError, _Reader

__all__ = ["Option", "LISTENER_OPTIONS", "positive", "read_options", "reference", "markers", "update_reference"]

_KINDS = {**_TYPE_NAMES, dict: "a table", list: "a list"}


@attrs.frozen
class Option:
    """
    One key of a ``[connectors.NAME]`` table: its ``name``, ``kind`` (``str``,
    ``int``, ``float``, ``bool``, ``list`` of text, or ``dict``), ``default``,
    a one-line ``help``, allowed ``choices``, a ``check`` returning what
    was expected when a value is wrong (else None), and ``required`` for a
    key the table must set. A connector declares
    them once and registers them with its factory::

        OPTIONS = (
            Option("listen", list, ["tcp:7777:interface=127.0.0.1"], "endpoint strings"),
            Option("rate", int, 20, "lines per second a client may send", check=positive),
        )
        api.register_connector("line", LineConnector, options=OPTIONS)

    The gateway then checks the table before it builds the connector (and
    ``gatewayctl config check`` does without starting anything), and hands
    the factory a dict with every declared key, defaults filled in.
    """

    name: str
    kind: type
    default: Any
    help: str = ""
    choices: tuple = ()
    check: Optional[Callable[[Any], Optional[str]]] = None
    required: bool = False  # the table must set it (``default`` is then only what the reference shows)


def positive(value) -> Optional[str]:
    """An `Option` check: numbers greater than 0."""
    return None if value > 0 else "a number greater than 0"


# The listener limit keys every connector's table accepts (`GatewayApi.LIMIT_KEYS`, see
# `GatewayApi.listen`), declared: a connector adds them to its own options.
LISTENER_OPTIONS = (
    Option("max_connections", int, 10_000, "connections open at once on each listener", check=positive),
    Option("max_connections_per_source", int, 50, "connections open at once from one address", check=positive),
    Option("max_output_buffer", int, 4 << 20, "bytes waiting for a peer that does not read before it is closed",
           check=positive),
    Option("output_timeout", float, 120.0, "seconds more than 64 KiB may wait for a peer before it is closed",
           check=positive),
)


def _line(path, section, key):
    if not path or path.startswith("<"):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return _Reader(path, f.read()).line_of(section, key)
    except (OSError, UnicodeDecodeError):
        return None


def _fail(message, path, connector, key=None):
    section = f"connectors.{connector}"
    raise ConfigError(message, path, f"{section}.{key}" if key else section, _line(path, section, key))


def read_options(connector: str, table: dict, options, path=None) -> dict:
    """
    ``table`` checked against ``options`` (a sequence of `Option`): a dict of
    every declared key (defaults filled in); `ConfigError` with the file,
    line and key for an unknown key or a wrong value.
    """
    declared = {option.name: option for option in options}
    for key in table:
        if key != "enabled" and key not in declared:
            _fail(f"unknown key {key!r}; known keys: {', '.join(declared) or 'none'}", path, connector, key)
    values = {}
    for option in options:
        if option.name not in table:
            if option.required:
                _fail(f"{option.name!r} is required: {option.help}", path, connector)
            values[option.name] = option.default
            continue
        raw = table[option.name]
        if raw is None and option.default is None:
            values[option.name] = None  # "not set", as a table read once already says it
            continue
        kind = option.kind
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if kind is list:
            ok = isinstance(raw, list)
        elif kind in (int, float):
            ok = isinstance(raw, kind) and not isinstance(raw, bool)
        else:
            ok = isinstance(raw, kind)
        if not ok:
            _fail(f"expected {_KINDS.get(kind, kind.__name__)}, got {raw!r}", path, connector, option.name)
        if option.choices and raw not in option.choices:
            _fail(f"expected one of {', '.join(map(repr, option.choices))}, got {raw!r}", path, connector, option.name)
        if option.check is not None:
            wanted = option.check(raw)
            if wanted:
                _fail(f"expected {wanted}, got {raw!r}", path, connector, option.name)
        values[option.name] = raw
    return values


def reference(connector: str, options) -> str:
    """The reStructuredText reference of a connector's options (for its README)."""
    lines = []
    for option in options:
        kind = _KINDS.get(option.kind, option.kind.__name__)
        lines.append(f"``{option.name}`` ({kind}, required)" if option.required
                     else f"``{option.name}`` ({kind}, default ``{option.default!r}``)")
        text = option.help or ""
        if option.choices:
            text += f" One of {', '.join(map(repr, option.choices))}."
        lines.append(f"    {text.strip()}")
    return "\n".join(lines)


def markers(connector: str) -> tuple:
    """The two comment lines a README holds ``connector``'s generated reference between."""
    # reStructuredText comments (not citations: no brackets right after the two dots).
    return (f".. options of connectors.{connector}: begin (generated from its OPTIONS by python -m gateway.options)",
            f".. options of connectors.{connector}: end")


def update_reference(text: str, connector: str, options) -> str:
    """``text`` (a README) with the part between ``connector``'s `markers` replaced by `reference`."""
    begin, end = markers(connector)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"no {begin!r} ... {end!r} lines to put the reference between")
    return text[:start] + begin + "\n\n" + reference(connector, options) + "\n\n" + text[stop:]


def main(argv=None) -> int:
    """``python -m gateway.options README MODULE:NAME CONNECTOR``: write the reference into the README."""
    import importlib
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or ":" not in argv[1]:
        sys.stderr.write("usage: python -m gateway.options README MODULE:OPTIONS CONNECTOR\n")
        return 2
    path, target, connector = argv
    module, _, attribute = target.partition(":")
    options = getattr(importlib.import_module(module), attribute)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = update_reference(text, connector, options)
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
