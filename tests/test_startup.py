"""Start-up: twistd plugin discovery, and one clear error for each way it can go wrong."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

from gateway.plugins import PluginLoadError, Plugins
from gateway.tap import Options, makeService


class FakeDistribution:
    """A real installed distribution on a temporary sys.path entry, as pip would leave it."""

    def __init__(self, case, name, entry_points, modules):
        self.dir = tempfile.mkdtemp(prefix="gw-dist-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        info = os.path.join(self.dir, f"{name.replace('-', '_')}-1.0.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write("[gateway]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        for module, source in modules.items():
            with open(os.path.join(self.dir, f"{module}.py"), "w") as f:
                f.write(textwrap.dedent(source))
        sys.path.insert(0, self.dir)
        case.addCleanup(sys.path.remove, self.dir)
        for module in modules:
            case.addCleanup(sys.modules.pop, module, None)


class PluginLoadingTests(unittest.TestCase):
    def test_plugin_that_fails_to_import_names_itself_and_its_distribution(self):
        FakeDistribution(self, "acme-broken", {"acme": "acme_broken"}, {"acme_broken": "raise ImportError('no module named acme_sdk')\n"})
        with self.assertRaises(PluginLoadError) as caught:
            Plugins().load_entry_points()
        message = str(caught.exception)
        self.assertIn("plugin 'acme'", message)
        self.assertIn("distribution acme-broken 1.0", message)
        self.assertIn("no module named acme_sdk", message)
        self.assertIn("[plugins] disabled", message)

    def test_disabled_broken_plugin_is_not_imported(self):
        FakeDistribution(self, "acme-broken", {"acme": "acme_broken"}, {"acme_broken": "raise RuntimeError('x')\n"})
        Plugins(disabled=["acme"]).load_entry_points()

    def test_hook_name_typo(self):
        FakeDistribution(
            self, "acme-typo", {"typo": "acme_typo"},
            {"acme_typo": """
                from gateway.hookspecs import hookimpl
                @hookimpl
                def gateway_policy_chek(event):
                    return None
            """},
        )
        with self.assertRaises(PluginLoadError) as caught:
            Plugins().load_entry_points()
        self.assertIn("gateway_policy_chek", str(caught.exception))
        self.assertIn("'typo'", str(caught.exception))

    def test_wrong_hook_arguments(self):
        FakeDistribution(
            self, "acme-args", {"args": "acme_args"},
            {"acme_args": """
                from gateway.hookspecs import hookimpl
                @hookimpl
                def gateway_policy_check(event, colour):
                    return None
            """},
        )
        with self.assertRaises(PluginLoadError) as caught:
            Plugins().load_entry_points()
        self.assertIn("colour", str(caught.exception))

    def test_plugin_that_raises_at_registration(self):
        FakeDistribution(
            self, "acme-reg", {"reg": "acme_reg"},
            {"acme_reg": """
                from gateway.hookspecs import hookimpl
                @hookimpl
                def gateway_register_connectors(api):
                    raise KeyError("licence")
            """},
        )
        from gateway.testing import make_core

        plugins = Plugins()
        plugins.load_entry_points()
        core = make_core(plugins=plugins)
        with self.assertRaises(PluginLoadError) as caught:
            core.start_plugins()
        message = str(caught.exception)
        self.assertIn("'reg' (distribution acme-reg 1.0) failed in gateway_register_connectors", message)
        self.assertIn("licence", message)

    def test_late_plugin_gets_historic_calls(self):
        from gateway.hookspecs import hookimpl
        from gateway.testing import make_core

        core = make_core()
        core.start_plugins()
        seen = []

        class Late:
            @hookimpl
            def gateway_startup(self, api):
                seen.append(api)

        core.plugins.register(Late(), "late")
        self.assertEqual(seen, [core.api])

    def test_unknown_disabled_name(self):
        with self.assertRaises(PluginLoadError) as caught:
            Plugins(disabled=["nonesuch"]).load_entry_points()
        self.assertIn("'nonesuch'", str(caught.exception))


class MakeServiceTests(unittest.TestCase):
    """makeService turns every start-up problem into one line (SystemExit), never a traceback."""

    def make(self, text):
        directory = tempfile.mkdtemp(prefix="gw-start-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "gateway.toml")
        with open(path, "w") as f:
            f.write(text)
        options = Options()
        options.parseOptions(["--config", path])
        return path, options

    def assertStops(self, text, *fragments):
        path, options = self.make(text)
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        message = str(caught.exception.code)
        self.assertTrue(message.startswith("gateway: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_bad_key(self):
        self.assertStops("[archive]\nfail_closed = 'yes'\n", "gateway.toml, line 2", "archive.fail_closed", "true or false")

    def test_unknown_connector(self):
        self.assertStops('[admin]\nlisten=""\n[connectors.telepathy]\n', "telepathy", "no installed plugin provides")

    def test_bad_connector_option(self):
        self.assertStops('[admin]\nlisten=""\n[connectors.line]\nport = 7\n', "connectors.line", "unknown key 'port'")

    def test_unreachable_database(self):
        self.assertStops(
            '[admin]\nlisten=""\n[database]\nurl = "postgresql://nobody@127.0.0.1:1/none"\n',
            "cannot reach the database", "127.0.0.1:1", "[database] url",
        )

    def test_missing_config_option(self):
        from twisted.python.usage import UsageError

        self.assertRaises(UsageError, Options().parseOptions, [])

    def test_builds_a_service(self):
        path, options = self.make('[admin]\nlisten = ""\n')
        service = makeService(options)
        self.assertEqual(service.core.node, "node1")
        service.engine.dispose()


class TwistdPluginTests(unittest.TestCase):
    def test_discovered(self):
        names = [maker.tapname for maker in getPlugins(IServiceMaker)]
        self.assertIn("gateway", names)

    def test_twistd_help_lists_it(self):
        if shutil.which("twistd") is None:
            raise unittest.SkipTest("twistd is not on PATH")
        out = subprocess.run(["twistd", "--help"], capture_output=True, text=True, timeout=60).stdout
        self.assertIn("gateway", out)
        self.assertIn("Instant-messaging federation and compliance gateway", out)


class SettleTests(unittest.TestCase):
    """At start, what start-up made leaves the garbage collector's scans."""

    def test_start_freezes(self):
        import gc

        from twisted.internet import reactor

        from gateway import service as service_module
        from gateway.config import loads

        folder = tempfile.mkdtemp(prefix="gw-settle-")
        self.addCleanup(shutil.rmtree, folder, True)
        config = loads(f'[gateway]\ndata_dir = "{folder}"\n[admin]\nlisten = ""\n')
        gateway = service_module.GatewayService(config, reactor)
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        gateway.startService()
        self.assertGreater(gc.get_freeze_count(), 0)
        return gateway.stopService()
