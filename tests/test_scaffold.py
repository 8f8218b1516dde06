"""gatewayctl plugin new: each kind installs, passes its own tests unchanged, and works in a running gateway."""

import ast
import json
import os
import subprocess
import sys

from twisted.trial import unittest

from tests.gateway_process import ROOT, Gateway, LineClient, have_example_plugin
from tests.support import free_port


def _run(args, **kwargs):
    env = dict(os.environ)
    env.update(kwargs.pop("env", {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=240, env=env, **kwargs)


class ScaffoldTests(unittest.TestCase):
    timeout = 300

    def make(self, name, kind):
        """Write plugin ``name``, install it into a folder of its own; that folder (for PYTHONPATH)."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        made = _run([sys.executable, "-m", "gateway.cli", "plugin", "new", name, "--kind", kind, "--dir", folder],
                    cwd=ROOT)
        self.assertEqual(made.returncode, 0, made.stdout + made.stderr)
        site = os.path.join(folder, "site")
        installed = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--target", site, os.path.join(folder, f"gateway-{name}")])
        self.assertEqual(installed.returncode, 0, installed.stdout + installed.stderr)
        self.path = os.pathsep.join([ROOT, site])
        return folder, site

    def trial(self, package):
        result = _run([sys.executable, "-m", "twisted.trial", package], cwd=self.mktemp() and os.getcwd(),
                      env={"PYTHONPATH": self.path})
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
        self.assertIn("PASSED (successes=", result.stdout)
        return result.stdout

    def imports_only_the_door(self, site, package):
        for folder, _, names in os.walk(os.path.join(site, package)):
            if os.path.basename(folder) == "test":
                continue
            for name in names:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name)) as f:
                        tree = ast.parse(f.read())
                    for node in ast.walk(tree):
                        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway"):
                            self.assertIn(node.module, ("gateway.plugin", package, f"{package}.plugin"), name)

    def test_hook_plugin(self):
        folder, site = self.make("acmedlp", "hook")
        self.assertIn("test_a_forbidden_word_is_denied", self.trial("gateway_acmedlp"))
        self.imports_only_the_door(site, "gateway_acmedlp")

    def test_connector_plugin_in_a_running_gateway(self):
        if not have_example_plugin():
            raise unittest.SkipTest("the example plugin is not installed (pip install ./examples/gateway-example-plugin)")
        folder, site = self.make("acme", "connector")
        self.assertIn("test_message_between_two_clients", self.trial("gateway_acme"))
        self.imports_only_the_door(site, "gateway_acme")
        # Listed, checked, and talking to a line connector's user through a real gateway.
        acme_port, line_port = free_port(), free_port()
        config = (
            '[gateway]\ndata_dir = "{dir}/var"\n[directory]\ndemo_users = true\n[admin]\nlisten = ""\n'
            f'[connectors.acme]\nlisten = ["tcp:{acme_port}:interface=127.0.0.1"]\n'
            f'[connectors.line]\nlisten = ["tcp:{line_port}:interface=127.0.0.1"]\n'
        )
        self.patch(os, "environ", dict(os.environ, PYTHONPATH=self.path))
        gateway = Gateway(self, config, wait_ports=(acme_port, line_port), name="gw-acme")
        listed = json.loads(gateway.gatewayctl("plugins", "--json"))
        self.assertIn("acme", [entry.get("name") for entry in listed])
        self.assertIn("ok", gateway.gatewayctl("config", "check"))
        acme = LineClient(acme_port)
        acme.send("LOGIN alice secret")
        self.assertEqual(acme.expect("OK LOGIN"), "OK LOGIN acme:alice")
        bob = LineClient(line_port, "bob")
        acme.send("MSG line:bob hello from acme")
        self.assertTrue(acme.expect("OK ").startswith("OK delivered"))
        # Each is shown the other under their own handle on their network (demo users have one everywhere).
        self.assertEqual(bob.expect("FROM"), "FROM line:alice hello from acme")
        bob.send("MSG acme:alice and back")
        self.assertEqual(acme.expect("FROM"), "FROM acme:bob and back")
        acme.close()
        bob.close()
        self.assertEqual(gateway.tracebacks(), [])
