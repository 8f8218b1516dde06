"""Connector options declared once: the core and gatewayctl config check hold a table to them."""

import io
import os

from twisted.trial import unittest

from gateway.cli import main
from gateway.config import ConfigError
from gateway.hookspecs import hookimpl
from gateway.options import Option, read_options, reference
from gateway.plugins import Plugins
from gateway.testing import MemoryConnector, make_core


def positive(value):
    return None if value > 0 else "a number greater than 0"


OPTIONS = (
    Option("listen", list, ["tcp:7777"], "endpoint strings"),
    Option("rate", int, 20, "lines per second", check=positive),
    Option("mode", str, "plain", "how to speak", choices=("plain", "fancy")),
    Option("timeout", float, 30.0, "seconds"),
)


class ReadTests(unittest.TestCase):
    def test_defaults_filled_in(self):
        self.assertEqual(read_options("acme", {"rate": 5}, OPTIONS),
                         {"listen": ["tcp:7777"], "rate": 5, "mode": "plain", "timeout": 30.0})

    def test_whole_number_for_a_float(self):
        self.assertEqual(read_options("acme", {"timeout": 2}, OPTIONS)["timeout"], 2.0)

    def test_errors_name_the_key_once(self):
        cases = [
            ({"rat": 5}, "connectors.acme.rat: unknown key 'rat'; known keys: listen, rate, mode, timeout"),
            ({"rate": "5"}, "connectors.acme.rate: expected a whole number, got '5'"),
            ({"rate": True}, "connectors.acme.rate: expected a whole number, got True"),
            ({"rate": 0}, "connectors.acme.rate: expected a number greater than 0, got 0"),
            ({"mode": "loud"}, "connectors.acme.mode: expected one of 'plain', 'fancy', got 'loud'"),
        ]
        for table, message in cases:
            e = self.assertRaises(ConfigError, read_options, "acme", table, OPTIONS)
            self.assertEqual(str(e), message)

    def test_file_and_line(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[gateway]\nnode = 'n'\n\n[connectors.acme]\nlisten = []\nrate = 'fast'\n")
        e = self.assertRaises(ConfigError, read_options, "acme", {"listen": [], "rate": "fast"}, OPTIONS, path)
        self.assertEqual(str(e), f"{path}, line 6: connectors.acme.rate: expected a whole number, got 'fast'")

    def test_reference(self):
        text = reference("acme", OPTIONS)
        self.assertIn("``mode`` (text, default ``'plain'``)", text)
        self.assertIn("One of 'plain', 'fancy'.", text)


class Acme:
    def __init__(self):
        self.seen = []

    @hookimpl
    def gateway_register_connectors(self, api):
        def build(api, config):
            self.seen.append(config)
            return MemoryConnector(api, config, name="acme", networks=("acme",))

        api.register_connector("acme", build, options=OPTIONS)


class CoreTests(unittest.TestCase):
    def test_the_factory_gets_checked_values(self):
        acme = Acme()
        plugins = Plugins()
        plugins.register(acme, "acme")
        core = make_core("[connectors.acme]\nrate = 3\n", plugins=plugins)
        core.start_plugins()
        self.assertEqual(acme.seen, [{"listen": ["tcp:7777"], "rate": 3, "mode": "plain", "timeout": 30.0}])

    def test_a_wrong_value_stops_start_up(self):
        plugins = Plugins()
        plugins.register(Acme(), "acme")
        core = make_core("[connectors.acme]\nrate = -1\n", plugins=plugins)
        e = self.assertRaises(ConfigError, core.start_plugins)
        self.assertIn("connectors.acme.rate: expected a number greater than 0, got -1", str(e))
        self.assertEqual(str(e).count("connectors.acme"), 1)


class ConnectorErrorTests(unittest.TestCase):
    """A connector that reads its table by hand: its error is not prefixed twice."""

    def test_no_doubled_prefix(self):
        from gateway.config import connector_option

        class HandMade:
            @hookimpl
            def gateway_register_connectors(self, api):
                api.register_connector("acme", lambda api, config: connector_option(
                    "acme", config, "server_name", str, ""))

        plugins = Plugins()
        plugins.register(HandMade(), "acme")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[connectors.acme]\nserver_name = 5\n")
        from gateway import config as config_module

        core = make_core(config_module.load(path), plugins=plugins)
        e = self.assertRaises(ConfigError, core.start_plugins)
        self.assertEqual(str(e), f"{path}, line 2: connectors.acme.server_name: expected text, got 5")


class ConfigCheckTests(unittest.TestCase):
    def run_check(self, text):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        out = io.StringIO()
        from unittest import mock

        err = io.StringIO()
        with mock.patch("sys.stderr", err):
            status = main(["--config", path, "config", "check"], out=out)
        return status, out.getvalue() + err.getvalue(), path

    def test_unknown_connector(self):
        status, output, path = self.run_check("[connectors.nosuch]\n")
        self.assertEqual(status, 2)
        self.assertIn("no installed plugin provides a connector called 'nosuch'", output)

    def test_declared_options_are_checked_before_start(self):
        from gateway.plugins import Plugins as RealPlugins

        original = RealPlugins.load_entry_points

        def with_acme(plugins):
            original(plugins)
            plugins.register(Acme(), "acme")

        self.patch(RealPlugins, "load_entry_points", with_acme)
        status, output, path = self.run_check("[connectors.acme]\nlisten = []\nratee = 5\n")
        self.assertEqual(status, 2)
        self.assertIn(f"{path}, line 3: connectors.acme.ratee: unknown key 'ratee'", output)
        status, output, _ = self.run_check("[connectors.acme]\nrate = 5\n")
        self.assertEqual(status, 0, output)


class RequiredTests(unittest.TestCase):
    def test_a_required_key_must_be_set(self):
        options = (Option("upstream", str, "", "host:port to relay to", required=True),)
        e = self.assertRaises(ConfigError, read_options, "relay", {}, options)
        self.assertEqual(str(e), "connectors.relay: 'upstream' is required: host:port to relay to")
        self.assertEqual(read_options("relay", {"upstream": "h:1"}, options), {"upstream": "h:1"})
        self.assertIn("``upstream`` (text, required)", reference("relay", options))


class ReferenceTests(unittest.TestCase):
    def test_the_readme_part_between_the_markers_is_replaced(self):
        from gateway.options import markers, update_reference

        begin, end = markers("acme")
        text = f"Intro\n\n{begin}\n\nold text\n\n{end}\n\nMore\n"
        new = update_reference(text, "acme", OPTIONS)
        self.assertEqual(new, f"Intro\n\n{begin}\n\n{reference('acme', OPTIONS)}\n\n{end}\n\nMore\n")
        self.assertEqual(update_reference(new, "acme", OPTIONS), new)
        self.assertRaises(ValueError, update_reference, "no markers", "acme", OPTIONS)


class BundledConnectorsDeclareTheirOptions(unittest.TestCase):
    """Each bundled connector declares its options, registers them, and its README's reference is generated."""

    def test_declared_registered_and_documented(self):
        import importlib

        from gateway.options import update_reference

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        declared = [("oscar", "gateway_oscar.connector", "oscar"), ("oscar-proxy", "gateway_oscar.proxy", "oscar"),
                    ("sametime", "gateway_sametime.connector", "sametime"), ("sip", "gateway_sip.connector", "sip"),
                    ("xmpp", "gateway_xmpp.connector", "xmpp")]
        offered = {}

        class Offers:
            def register_connector(self, connector, factory, options=None):
                offered[connector] = options

        # Each bundled plugin as the gateway loads it: its entry point (a module, or a class to instantiate).
        from importlib.metadata import entry_points

        loaded = {ep.name: ep.load() for ep in entry_points(group="gateway")}
        for plugin in ("oscar", "sametime", "sip", "xmpp"):
            target = loaded[plugin]
            (target() if isinstance(target, type) else target).gateway_register_connectors(api=Offers())
        for name, module, plugin in declared:
            options = importlib.import_module(module).OPTIONS
            self.assertEqual(tuple(offered[name] or ()), tuple(options), name)
            readme = os.path.join(root, "plugins", plugin, "README.rst")
            with open(readme, encoding="utf-8") as f:
                text = f.read()
            self.assertEqual(update_reference(text, name, options), text,
                             f"{readme}: python -m gateway.options {readme} {module}:OPTIONS {name}")
