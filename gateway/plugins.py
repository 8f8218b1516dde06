"""The plugin manager: entry-point group ``gateway``, per-plugin calls with isolation."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import os
import sys
import time

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

    def __init__(self, disabled=(), trace=False):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = frozenset(disabled)
        self.loaded = {}  # name -> distribution text
        self.trace = trace or os.environ.get("GATEWAY_TRACE_HOOKS", "") not in ("", "0")
        self._history = []  # (hook name, kwargs) of historic calls, replayed to late plugins

    def load_entry_points(self):
        """Load every installed plugin not disabled; raise `PluginLoadError` on the first that fails."""
        found = self.load_entry_points_named(
            sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name)
        )
        unknown = self.disabled - found
        if unknown:
            raise PluginLoadError(
                f"[plugins] disabled names {', '.join(sorted(map(repr, unknown)))}, "
                f"but no installed plugin is called that; installed: "
                f"{', '.join(sorted(found)) or 'none'}"
            )
        self.check()

    def load_entry_points_named(self, entry_points):
        """Load these entry points (those not disabled); the set of their names."""
        found = set()
        for entry_point in entry_points:
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
        return found

    def load_paths(self, paths):
        """
        Load one-off plugin modules from files (``[plugins] paths``): each
        is registered as ``file:NAME`` (NAME the file's name without
        ``.py``), for a quick rule that needs no packaging.
        """
        for path in paths:
            name = "file:" + os.path.splitext(os.path.basename(path))[0]
            if name in self.disabled or name[5:] in self.disabled:
                continue
            module_name = "gateway_file_plugin_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
            try:
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None:
                    raise ImportError("not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            except Exception as e:
                raise PluginLoadError(
                    f"plugin file {path} failed to load: {type(e).__name__}: {e}. "
                    "Fix it or remove it from [plugins] paths."
                ) from e
            self.register(module, name, f"file {path}")
        self.check()

    def register(self, plugin, name, dist="built in"):
        self._check_version(plugin, name, dist)
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

    def _check_version(self, plugin, name, dist):
        """A plugin may say which hook spec version it needs (``gateway_hookspec_version``); refuse a newer one."""
        needed = getattr(plugin, "gateway_hookspec_version", None)
        if needed is None:
            return
        if not isinstance(needed, int) or needed > hookspecs.HOOKSPEC_VERSION:
            raise PluginLoadError(
                f"plugin {name!r} ({dist}) needs hook spec version {needed!r}, but this gateway "
                f"has version {hookspecs.HOOKSPEC_VERSION}: upgrade the gateway, or use a release "
                "of the plugin made for this one"
            )

    def describe(self):
        """
        Every registered plugin: ``(name, distribution, kind, hooks)``: kind
        ``connector`` when it registers connectors, else ``hook``.
        """
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            hooks = sorted(caller.name for caller in (self.pm.get_hookcallers(plugin) or ()))
            kind = "connector" if "gateway_register_connectors" in hooks else "hook"
            out.append((name, self.loaded.get(name, "built in"), kind, hooks))
        return out

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
        found = [
            (impl.plugin_name, impl.function, tuple(impl.argnames))
            for impl in reversed(caller.get_hookimpls())
        ]
        if self.trace:
            found = [(name, _traced(hook_name, name, function), argnames) for name, function, argnames in found]
        return found


def _traced(hook_name, plugin, function):
    """``function``, logging each call: arguments, answer (or error, when a Deferred fires too) and time."""
    log = Logger(namespace="gateway.trace")

    def call(**kwargs):
        started = time.perf_counter()
        shown = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
        try:
            answer = function(**kwargs)
        except Exception as e:
            log.info("hook {hook} plugin {plugin}({args}) raised {error} after {ms:.3f} ms",
                     hook=hook_name, plugin=plugin, args=shown, error=repr(e),
                     ms=(time.perf_counter() - started) * 1000)
            raise
        if hasattr(answer.__class__, "addCallbacks"):
            def fired(result):
                log.info("hook {hook} plugin {plugin}({args}) answered later {answer} after {ms:.3f} ms",
                         hook=hook_name, plugin=plugin, args=shown, answer=_short(result),
                         ms=(time.perf_counter() - started) * 1000)
                return result
            answer.addBoth(fired)
        else:
            log.info("hook {hook} plugin {plugin}({args}) answered {answer} in {ms:.3f} ms",
                     hook=hook_name, plugin=plugin, args=shown, answer=_short(answer),
                     ms=(time.perf_counter() - started) * 1000)
        return answer

    return call


def _short(value, limit=200):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
