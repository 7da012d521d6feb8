"""The layering's promises that import-linter cannot see: the CLI starts without torch, and
each module imports on its own (no module leans on another having been imported first)."""

import subprocess
import sys

_EACH_ALONE = r"""
import importlib, pkgutil, sys
import eelight
names = sorted(m.name for m in pkgutil.walk_packages(eelight.__path__, "eelight."))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "eelight" or m.startswith("eelight.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exn:
        failed.append(f"{name}: {type(exn).__name__}: {exn}")
print(len(names))
print("\n".join(failed))
"""


def test_the_cli_imports_no_torch():
    code = "import sys, eelight.cli; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_module_imports_on_its_own():
    out = subprocess.run([sys.executable, "-c", _EACH_ALONE], capture_output=True, text=True, check=True).stdout
    count, *failed = out.strip().split("\n")
    assert int(count) > 60 and not [f for f in failed if f], failed
