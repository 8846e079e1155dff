"""docs/architecture.md's layers, held: every import in preflab/ read (deferred ones too), and
none forms a circle, goes up a floor, or has one command import another."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
P = "preflab"


@pytest.fixture(scope="module")
def layers():
    spec = importlib.util.spec_from_file_location("layers", ROOT / "scripts" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["layers"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph(layers):
    return layers.read()


def test_every_package_declares_what_it_may_import(graph):
    packages = [n for n in graph.nodes if (ROOT / "preflab" / n).is_dir()]
    assert {"data", "models", "training", "algorithms", "commands", "compare"} <= set(packages)
    assert [p for p in packages if graph.declared.get(p) is None] == []


def test_no_circles(graph):
    assert graph.circles() == []


def test_no_arrow_goes_up(graph):
    assert graph.undeclared() == []
    assert graph.arrows_up() == []


def test_top_level_is_the_face_cli_and_errors():
    top = sorted(p.name for p in (ROOT / "preflab").glob("*.py"))
    assert top == ["__init__.py", "cli.py", "errors.py"]


def test_no_command_imports_another(layers, graph):
    from preflab import algorithms, cli

    commands = {name: module for name, (module, _) in cli.COMMANDS.items()}
    commands.update({m.name: m.module for m in algorithms.registry().values()})
    assert len(commands) >= 18
    assert layers.commands_importing_commands(graph, commands) == []


def test_the_checks_catch_what_they_are_for(layers, tmp_path):
    """A made-up package with a circle, an arrow up and a command importing a command (its
    modules' names built from P, so the docs' name check does not read them as preflab's)."""
    pkg = tmp_path / P
    for name, doc, body in [
        ("low", "May import: errors.", "from {P}.high import thing\n"),
        ("high", "May import: errors, low.", "from {P}.low import a\n"),
        ("cmds", "May import: errors, low.", ""),
    ]:
        (pkg / name).mkdir(parents=True)
        (pkg / name / "__init__.py").write_text(f'"""{name}.\n\n{doc}\n"""\n' + body.format(P=P))
    (pkg / "low" / "a.py").write_text(f"from {P}.low import b\n")
    (pkg / "low" / "b.py").write_text(f"import {P}.low.a\n")
    (pkg / "cmds" / "one.py").write_text(textwrap.dedent(f"""\
        def main():
            from {P}.cmds import two
        """))
    (pkg / "cmds" / "two.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "__init__.py").write_text("")
    graph = layers.read(pkg)
    assert [f"{P}.low.a", f"{P}.low.b"] in graph.circles()
    assert ("low", "high") in graph.arrows_up()
    assert graph.undeclared() == [("low", "high")]
    commands = {"one": f"{P}.cmds.one", "two": f"{P}.cmds.two"}
    assert layers.commands_importing_commands(graph, commands) == [
        (f"{P}.cmds.one", f"{P}.cmds.two")]
