"""The API reference of the public door builds with pydoctor, without a warning."""

import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ApiReferenceTests(unittest.TestCase):
    timeout = 300

    def test_builds_without_warnings(self):
        try:
            import pydoctor  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("pydoctor is not installed (pip install '.[test]')")
        if shutil.which("bash") is None:
            raise unittest.SkipTest("no bash to run docs/build-api.sh")
        out = os.path.abspath(self.mktemp())
        result = subprocess.run(
            ["bash", os.path.join(ROOT, "docs", "build-api.sh"), out],
            capture_output=True, text=True, timeout=280, env=dict(os.environ, PYTHON=sys.executable),
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        with open(os.path.join(out, "gateway.plugin.html"), encoding="utf-8") as f:
            page = f.read()
        self.assertIn("The public door", page)
        self.assertTrue(os.path.exists(os.path.join(out, "gateway.hookspecs.html")))
