"""The house's layout rules, checked: no module over 1,000 lines, no two modules importing each other."""

import ast
import os

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Package folder -> its import name: the core and each bundled plugin's package.
PACKAGES = {os.path.join(ROOT, "gateway"): "gateway"}
for _name in sorted(os.listdir(os.path.join(ROOT, "plugins"))):
    _folder = os.path.join(ROOT, "plugins", _name, f"gateway_{_name}")
    if os.path.isdir(_folder):
        PACKAGES[_folder] = f"gateway_{_name}"
PACKAGES[os.path.join(ROOT, "examples", "gateway-example-plugin", "gateway_example")] = "gateway_example"


def modules():
    """Module name -> path of every module of the core and the bundled plugins."""
    found = {}
    for folder, package in PACKAGES.items():
        for here, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__" and d != "migrations"]
            for file in files:
                if file.endswith(".py"):
                    relative = os.path.relpath(os.path.join(here, file), folder)[:-3].replace(os.sep, ".")
                    name = package if relative == "__init__" else f"{package}.{relative}"
                    found[name.removesuffix(".__init__")] = os.path.join(here, file)
    return found


def imports(path, known):
    """The known modules the module at ``path`` imports, at any level (functions included)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            # "from package import submodule" imports the submodule, not the package's own names.
            if len(submodules) < len(node.names):
                found.add(node.module)
            found |= submodules
    return found & known


class LayoutTests(unittest.TestCase):
    def test_no_module_over_1000_lines(self):
        long = []
        for name, path in sorted(modules().items()):
            with open(path, encoding="utf-8") as f:
                count = sum(1 for _ in f)
            if count > 1000:
                long.append(f"{name}: {count} lines")
        self.assertEqual(long, [])

    def test_no_two_modules_import_each_other(self):
        found = modules()
        known = set(found)
        graph = {name: imports(path, known) - {name} for name, path in found.items()}
        circles = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                          if a in graph.get(b, ())})
        self.assertEqual(circles, [])
