"""Every module imports; the light ones stay light."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import preflab


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(preflab.__path__, "preflab."))


def test_every_module_imports():
    names = all_modules()
    assert "preflab.algorithms.sft" in names and "preflab.losses" in names
    for name in names:
        importlib.import_module(name)


def test_cli_help_is_light():
    code = "import preflab.cli, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
