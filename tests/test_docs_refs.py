"""Docs and docstrings name what exists: every dotted name that starts with ``preflab`` (a
module, a module's attribute, or ``module:function`` as a reward spec names one) in
README.md, docs/ and the comments and docstrings of preflab/, tests/ and benchmarks/
imports and resolves. A quoted name in code (a profiler range's name in
``preflab/models/fused_head.py``) is a value, not a reference, and is left out."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
         *(p for folder in ("preflab", "tests", "benchmarks")
           for p in sorted((ROOT / folder).rglob("*.py")))]
NAME = re.compile(r"(?<![\w./\-'\"])preflab(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")


def unresolved(name: str) -> str | None:
    """Why ``name`` does not resolve, or None: its longest importable module prefix, then
    attributes."""
    parts = name.replace(":", ".").split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                continue  # not a module: try the shorter prefix
            raise  # the module exists but needs something missing: a real error
        for attr in parts[i:]:
            if not hasattr(found, attr):
                return f"{module} has no {'.'.join(parts[i:])}"
            found = getattr(found, attr)
        return None
    return "no such module"


def references() -> list[tuple[str, str]]:
    """(file:line, name) for every dotted preflab name in FILES."""
    found = []
    for path in FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [(f"{path.relative_to(ROOT)}:{number}", m.group(0))
                      for m in NAME.finditer(line)]
    return found


def test_dotted_preflab_names_resolve():
    found = references()
    names = {name for _, name in found}
    assert len(names) > 50  # the pattern still finds the names
    stale = [f"{where}: {name}: {why}" for where, name in found
             if (why := unresolved(name)) is not None]
    assert stale == []


def test_a_stale_name_is_caught():
    assert unresolved("preflab.rl.rollouts.per_token_rewards") is not None
    assert unresolved("preflab.generation.no_such_function") is not None
    assert unresolved("preflab.commands.reviews:no_such_reward") is not None
    assert unresolved("preflab.generation.generate") is None
