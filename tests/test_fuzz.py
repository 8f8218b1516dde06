"""
The fuzzing campaign in the test suite (fuzz/run.py, fuzz/targets.py):

- every input a fuzzer once found a defect with (fuzz/regressions/TARGET/)
  is fed to its target again, as is every target's seed;
- a short coverage-guided run of every target: ``GATEWAY_FUZZ_SECONDS``
  each (default 20; 0 skips the run, saying so), two at a time. A defect
  found fails the target's test with the input's file and the traceback.
"""

import json
import os
import subprocess
import sys
import tempfile

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fuzz import targets  # noqa: E402  (the checkout's fuzz package)

REGRESSIONS = os.path.join(ROOT, "fuzz", "regressions")
SECONDS = int(os.environ.get("GATEWAY_FUZZ_SECONDS", "20"))

_built = {}


def _target(name):
    """Each target is built once per test run, as a fuzzer process builds it once."""
    if name not in _built:
        _built[name] = targets.TARGETS[name]()
    return _built[name]


class SavedInputTests(unittest.TestCase):
    """What the fuzzers start from and what they once found, fed again without a fuzzer."""

    def test_seeds(self):
        for name in targets.TARGETS:
            one = _target(name)
            seeds = list(targets.SEEDS[name])
            self.assertTrue(seeds, f"{name} has no seeds")
            for index, data in enumerate(seeds):
                try:
                    one(data)
                except Exception as e:
                    self.fail(f"{name}: seed {index}: {e!r}")

    def test_regressions(self):
        saved = sorted(os.listdir(REGRESSIONS))
        self.assertTrue(saved)
        for name in saved:
            self.assertIn(name, targets.TARGETS, f"fuzz/regressions/{name} names no target")
            one = _target(name)
            for entry in sorted(os.listdir(os.path.join(REGRESSIONS, name))):
                with open(os.path.join(REGRESSIONS, name, entry), "rb") as f:
                    data = f.read()
                try:
                    one(data)
                except Exception as e:
                    self.fail(f"fuzz/regressions/{name}/{entry}: {e!r}")

    def test_a_defect_is_caught(self):
        # The harness itself: an error logged while a connection is fed is a defect.
        from twisted.logger import Logger

        machine = targets.LineConnections()
        machine.fresh = lambda: (Logger().error("a defect"), targets.LineConnections.fresh(machine))[1]
        self.assertRaises(targets.Defect, machine.one, b"\x00LOGIN alice secret\n")
        self.flushLoggedErrors()


_campaign = {}


def campaign():
    """Run fuzz/run.py once for every target; its results by target."""
    if not _campaign:
        with tempfile.TemporaryDirectory(prefix="gateway-fuzz-test-") as folder:
            report = os.path.join(folder, "report.json")
            done = subprocess.run(
                [sys.executable, os.path.join(ROOT, "fuzz", "run.py"), "--seconds", str(SECONDS), "--jobs", "2",
                 "--crashes", os.path.join(folder, "crashes"), "--json", report],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
            )
            output = done.stdout.decode("utf-8", "replace")
            sys.stdout.write(output)
            results = json.load(open(report)) if os.path.exists(report) else []
            for result in results:
                if not result["ok"]:
                    # The crash file goes with the folder: keep its bytes in the report.
                    if result.get("crash") and os.path.exists(result["crash"]):
                        result["input"] = open(result["crash"], "rb").read()
            _campaign.update({r["target"]: r for r in results})
            _campaign["_output"] = output
    return _campaign


class CampaignTests(unittest.TestCase):
    """A short coverage-guided (atheris) run of each target; see fuzz/run.py for the long run."""

    def setUp(self):
        if SECONDS <= 0:
            raise unittest.SkipTest("GATEWAY_FUZZ_SECONDS=0: the fuzzing run is off")
        try:
            import atheris  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("atheris is not installed (pip install '.[test]')")


def _campaign_test(name):
    def test(self):
        results = campaign()
        result = results.get(name)
        self.assertIsNotNone(result, results.get("_output", "")[-3000:])
        self.assertTrue(result["runs"] > 0, result)
        if not result["ok"]:
            self.fail(f"{name}: the fuzzer found a defect; input {result.get('input')!r}\n"
                      f"{result.get('excerpt', '')}")

    test.__doc__ = f"{name}: {SECONDS} s of fuzzing finds no defect."
    return test


for _name in targets.TARGETS:
    setattr(CampaignTests, "test_" + _name.replace("-", "_"), _campaign_test(_name))
