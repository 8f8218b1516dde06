"""The public door for plugin authors: gateway.plugin, version checks, one-off plugin files, tracing, listing."""

import io
import json
import os

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

import gateway
import gateway.plugin
from gateway.plugins import PluginLoadError, Plugins
from gateway.testing import make_core
from tests.gateway_process import have_example_plugin


class DoorTests(unittest.TestCase):
    def test_hookimpl_from_the_package_and_the_door(self):
        from gateway import hookimpl
        from gateway.hookspecs import hookimpl as marker

        self.assertIs(hookimpl, marker)
        self.assertIs(gateway.plugin.hookimpl, marker)

    def test_every_public_name_is_there(self):
        for name in gateway.plugin.__all__:
            self.assertTrue(hasattr(gateway.plugin, name), name)
        self.assertIn("policy", gateway.plugin.OUTCOME_CODES)

    def test_outcome_codes_the_path_uses_are_documented(self):
        import re

        here = os.path.dirname(gateway.__file__)
        used = set()
        for name in ("path/bus.py", "api.py"):
            with open(os.path.join(here, name)) as f:
                used |= set(re.findall(r'"([a-z-]+)"\)?\s*$', f.read(), re.M)) & {
                    "unknown-recipient", "offline", "offline-full", "archive-unavailable", "delivery-failed",
                    "directory-unavailable", "transform", "internal", "unsupported", "policy"}
        self.assertLessEqual(used, set(gateway.plugin.OUTCOME_CODES))


class NeedsTheFuture:
    gateway_hookspec_version = 99

    @gateway.plugin.hookimpl
    def gateway_startup(self, api):
        pass


class VersionTests(unittest.TestCase):
    def test_a_plugin_needing_a_newer_hook_spec_is_refused_by_name(self):
        plugins = Plugins()
        e = self.assertRaises(PluginLoadError, plugins.register, NeedsTheFuture(), "future", "distribution acme 2.0")
        self.assertIn("'future'", str(e))
        self.assertIn("acme 2.0", str(e))
        self.assertIn("version 99", str(e))


RULE = '''
from gateway.plugin import Verdict, hookimpl

@hookimpl
def gateway_policy_check(event):
    if "quarterly numbers" in getattr(event, "text", ""):
        return Verdict.deny("not before the announcement", rule="quiet-period")
'''


class FilePluginTests(unittest.TestCase):
    def write(self, text, name="quiet_period.py"):
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_a_rule_in_a_file_is_a_plugin(self):
        plugins = Plugins()
        plugins.load_paths([self.write(RULE)])
        [(name, function, _)] = plugins.implementations("gateway_policy_check")
        self.assertEqual(name, "file:quiet_period")
        from gateway.testing import MemoryConnector, MemoryDirectory

        directory = MemoryDirectory()
        directory.add("a", "mem:a")
        directory.add("b", "mem:b")
        core = make_core("", plugins=plugins, directory=directory)

        connector = MemoryConnector(core.api)
        core.connectors["memory"] = connector
        core.bus.refresh_hooks()
        outcome = []
        core.bus.submit(core.api.message("mem:a", "mem:b", "the quarterly numbers")).addCallback(outcome.append)
        self.assertEqual(outcome[0].rule, "quiet-period")

    def test_a_broken_file_stops_start_up_naming_it(self):
        path = self.write("this is not python\n", "broken.py")
        e = self.assertRaises(PluginLoadError, Plugins().load_paths, [path])
        self.assertIn(path, str(e))


class TraceTests(unittest.TestCase):
    def test_each_hook_call_is_logged_with_its_answer(self):
        seen = []

        def observe(event):
            if event.get("log_namespace") == "gateway.trace":
                seen.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        plugins = Plugins(trace=True)
        plugins.register(NeedsNothing(), "acme")
        [(name, function, argnames)] = plugins.implementations("gateway_policy_check")
        function(event="an event")
        [entry] = seen
        self.assertEqual((entry["hook"], entry["plugin"]), ("gateway_policy_check", "acme"))
        self.assertIn("'an event'", entry["args"])
        self.assertIn("Verdict", entry["answer"])


class NeedsNothing:
    @gateway.plugin.hookimpl
    def gateway_policy_check(self, event):
        return gateway.plugin.Verdict.allow()


class ListingTests(unittest.TestCase):
    def test_gatewayctl_plugins_lists_installed_and_file_plugins(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        from gateway.cli import main

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "rule.py"), "w") as f:
            f.write(RULE)
        config = os.path.join(folder, "gateway.toml")
        with open(config, "w") as f:
            f.write('[plugins]\npaths = ["rule.py"]\ndisabled = ["example-dlp"]\n')
        out = io.StringIO()
        self.assertEqual(main(["--config", config, "plugins", "--json"], out=out), 0)
        listed = {entry["name"]: entry for entry in json.loads(out.getvalue())}
        self.assertEqual(listed["example-dlp"]["state"], "disabled")
        self.assertEqual(listed["example-dlp"]["kind"], "hook")
        self.assertIn("gateway_transform", listed["example-dlp"]["hooks"])
        self.assertEqual(listed["example-line"]["kind"], "connector")
        self.assertEqual(listed["file:rule"]["hooks"], ["gateway_policy_check"])
        self.assertTrue(listed["example-line"]["distribution"].startswith("gateway-example-plugin"))


class BundledPluginsUseOnlyTheDoorTests(unittest.TestCase):
    """The bundled plugins are what third parties copy: they import only gateway.plugin from the core."""

    def test_no_bundled_plugin_reaches_behind_the_door(self):
        import ast

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        packages = [os.path.join(root, "examples", "gateway-example-plugin", "gateway_example")]
        for name in sorted(os.listdir(os.path.join(root, "plugins"))):
            folder = os.path.join(root, "plugins", name, f"gateway_{name}")
            if os.path.isdir(folder):
                packages.append(folder)
        behind = []
        for package in packages:
            for folder, dirs, files in os.walk(package):
                dirs[:] = [d for d in dirs if d not in ("test", "tests", "__pycache__")]
                for file in files:
                    if not file.endswith(".py") or file.startswith("test_"):
                        continue
                    path = os.path.join(folder, file)
                    with open(path, encoding="utf-8") as f:
                        tree = ast.parse(f.read(), path)
                    for node in ast.walk(tree):
                        modules = []
                        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                            modules = [node.module]
                        elif isinstance(node, ast.Import):
                            modules = [alias.name for alias in node.names]
                        for module in modules:
                            if module.split(".")[0] == "gateway" and module != "gateway.plugin":
                                behind.append(f"{os.path.relpath(path, root)}:{node.lineno} imports {module}")
        self.assertEqual(behind, [])
