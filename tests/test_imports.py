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


def test_no_algorithm_imports_another():
    """docs/architecture.md's layers: an algorithm file never imports another algorithm file; what two
    of them share lives a layer down (e.g. ``preflab.training.direct`` for dpo and online-dpo)."""
    import ast
    from pathlib import Path

    folder = Path(preflab.__file__).parent / "algorithms"
    files = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    names = {p.stem for p in files}
    assert {"dpo", "online_dpo", "ppo"} <= names
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found += [(path.name, t) for t in targets
                      if t.startswith("preflab.algorithms.") and t.split(".")[2] in names
                      and t.split(".")[2] != path.stem]
    assert found == []
