"""The plugin manager: entry-point group ``gateway``, per-plugin calls with isolation."""

from __future__ import annotations

import importlib.metadata
import inspect

import pluggy
from twisted.logger import Logger

from gateway import hookspecs

GROUP = "gateway"


class PluginLoadError(Exception):
    """A plugin could not be loaded; the message names it, its distribution and what to do."""


def _dist_name(entry_point) -> str:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"distribution {dist.metadata['Name']} {dist.version}"


class Plugins:
    """
    A typed facade over pluggy's manager.

    Hooks whose implementations must be isolated from each other (policy,
    transform, observers) are called one implementation at a time through
    `implementations`, so one plugin's exception never hides another's
    answer.
    """

    log = Logger()

    def __init__(self, disabled=()):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = frozenset(disabled)
        self.loaded = {}  # name -> distribution text
        self._history = []  # (hook name, kwargs) of historic calls, replayed to late plugins

    def load_entry_points(self):
        """Load every installed plugin not disabled; raise `PluginLoadError` on the first that fails."""
        found = set()
        for entry_point in sorted(
            importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name
        ):
            found.add(entry_point.name)
            if entry_point.name in self.disabled:
                self.log.info("plugin {plugin} is disabled by the config", plugin=entry_point.name)
                continue
            if self.pm.has_plugin(entry_point.name):
                continue
            dist = _dist_name(entry_point)
            try:
                plugin = entry_point.load()
                if inspect.isclass(plugin):
                    plugin = plugin()  # a class names a plugin whose instance keeps its state
            except Exception as e:
                raise PluginLoadError(
                    f"plugin {entry_point.name!r} ({dist}) failed to import: "
                    f"{type(e).__name__}: {e}. Fix or uninstall that distribution, "
                    f"or add {entry_point.name!r} to [plugins] disabled."
                ) from e
            self.register(plugin, entry_point.name, dist)
        unknown = self.disabled - found
        if unknown:
            raise PluginLoadError(
                f"[plugins] disabled names {', '.join(sorted(map(repr, unknown)))}, "
                f"but no installed plugin is called that; installed: "
                f"{', '.join(sorted(found)) or 'none'}"
            )
        self.check()

    def register(self, plugin, name, dist="built in"):
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as e:
            raise PluginLoadError(
                f"plugin {name!r} ({dist}) cannot be registered: {e}"
            ) from e
        self.loaded[name] = dist
        self.log.info("plugin {plugin} loaded from {dist}", plugin=name, dist=dist)
        for hook_name, kwargs in self._history:
            self._call_each(hook_name, kwargs, only=name)

    def call_historic(self, hook_name, **kwargs):
        """
        Call a historic hook on every plugin now, and on any plugin
        registered later. A plugin that raises stops start-up with a
        `PluginLoadError` naming it.
        """
        self._history.append((hook_name, kwargs))
        self._call_each(hook_name, kwargs)

    def _call_each(self, hook_name, kwargs, only=None):
        for name, function, argnames in self.implementations(hook_name):
            if only is not None and name != only:
                continue
            try:
                function(**{a: kwargs[a] for a in argnames})
            except Exception as e:
                raise PluginLoadError(
                    f"plugin {name!r} ({self.loaded.get(name, 'built in')}) failed in "
                    f"{hook_name}: {type(e).__name__}: {e}"
                ) from e

    def check(self):
        """Every hook implementation must match a spec (catches typos in hook names)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            name = self.pm.get_name(e.plugin) if e.plugin is not None else "?"
            raise PluginLoadError(
                f"plugin {name!r} ({self.loaded.get(name, 'unknown distribution')}) "
                f"implements a hook the gateway does not have: {e}"
            ) from e

    @property
    def hook(self):
        return self.pm.hook

    def implementations(self, hook_name):
        """[(plugin name, function, argnames)] of one hook, in call order."""
        caller = getattr(self.pm.hook, hook_name)
        return [
            (impl.plugin_name, impl.function, tuple(impl.argnames))
            for impl in reversed(caller.get_hookimpls())
        ]
