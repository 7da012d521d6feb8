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


def test_importing_eelight_turns_on_huge_pages_for_large_cpu_tensors_unless_told_otherwise():
    import os

    code = "import os, eelight; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    run = [sys.executable, "-c", code]
    assert subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout.strip() == "1"
    kept = subprocess.run(run, capture_output=True, text=True, env={**env, "THP_MEM_ALLOC_ENABLE": "0"}, check=True)
    assert kept.stdout.strip() == "0"  # the user's choice wins
