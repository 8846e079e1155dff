"""The training methods, one file each, and the registry every other layer reads them from.

An algorithm file holds a Config dataclass (its flags), what its loop does that no other
does, ``main(argv)``, and one declaration, ``METHOD = Method(...)``: its command name and
road, its config, the model roles it holds and trains, how ``preflab plan`` counts its memory,
how ``preflab compare`` runs it and how long that takes on the built-in world. ``preflab``'s
command list, compare (the harness, the rows, the settings), plan and the docs read the
methods from here and from nowhere else, so a new method is one new file here. The loops
themselves live a floor down: ``preflab.training.steps`` (step-based) and ``preflab.rl.loop``
(rollouts). An algorithm file never imports another algorithm file.

May import: errors, config, data, losses, metrics, models, runtime, rewards, generation,
evaluation, training, judges, rl.
"""

from __future__ import annotations

import functools
import importlib
import os
import re

TYPE_CHECKING = False  # typing's own costs preflab's start 2 ms
if TYPE_CHECKING:
    from preflab.algorithms._declare import Compared, Method

ROADS = ("sft", "reward", "direct", "rlhf")
"""sft: supervised fine-tuning; reward: a reward model; direct: preference data straight into
the policy (the article's DPO road); rlhf: a reward signal and reinforcement learning."""

FOLDER = os.path.dirname(__file__)  # os.path, not pathlib: preflab's start stays light


def _files() -> list[str]:
    """The algorithm files: every module here but ``__init__`` and ``_declare``."""
    return sorted(os.path.join(FOLDER, name) for name in os.listdir(FOLDER)
                  if name.endswith(".py") and not name.startswith("_"))


def __getattr__(name: str):
    """``Method``, ``Compared`` and ``SHAPES`` load with ``_declare`` when an algorithm file or a
    reader of the registry first asks for them."""
    if name in ("Method", "Compared", "SHAPES"):
        from preflab.algorithms import _declare

        return getattr(_declare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DECLARATION = re.compile(
    r'^METHOD = Method\(\s*name="([\w-]+)", road="(\w+)",\s*summary=((?:\s*"[^"\n]*")+)', re.M)
"""The start of a declaration as ``commands()`` reads it: ``name``, ``road`` and ``summary``
first, in that order, each a plain string (the summary may be split into adjacent ones)."""


@functools.cache
def _declarations() -> tuple[tuple[str, str, str, str], ...]:
    """(name, road, module, summary) of every file's declaration read as text, in the order of
    ``ROADS``, then by name."""
    found = []
    for path in _files():
        with open(path, encoding="utf-8") as file:
            match = DECLARATION.search(file.read())
        if match is None:
            raise ValueError(f"{path}: no declaration; an algorithm file ends with METHOD = "
                             'Method(name="...", road="...", summary="...", ...)')
        name, road, summary = match.groups()
        if road not in ROADS:
            raise ValueError(f"{path}: METHOD's road {road!r} is not one of {ROADS}")
        stem = os.path.splitext(os.path.basename(path))[0]
        found.append((ROADS.index(road), name, road, f"{__name__}.{stem}",
                      "".join(re.findall(r'"([^"\n]*)"', summary))))
    return tuple(entry[1:] for entry in sorted(found))


def commands() -> dict[str, tuple[str, str]]:
    """``{command: (module, summary)}`` from the start of each file's declaration read as text
    (``DECLARATION``): every ``preflab`` command looks its module up here, so this imports no
    torch and parses no Python. ``registry()`` checks that each module's ``METHOD`` says the
    same."""
    return {name: (module, summary) for name, _, module, summary in _declarations()}


@functools.cache
def registry() -> dict[str, Method]:
    """Every method by command name, each module imported (torch with it)."""
    from dataclasses import replace

    from preflab.algorithms._declare import Method

    out = {}
    for name, road, module_name, summary in _declarations():
        method = importlib.import_module(module_name).METHOD
        if not isinstance(method, Method) or (method.name, method.road, method.summary) != (
                name, road, summary):
            raise TypeError(f"{module_name}.METHOD is not the Method {name!r} its text declares "
                            f"(road {road!r}, summary {summary!r})")
        out[name] = replace(method, module=module_name)
    return out


def compared() -> dict[str, tuple[Method, Compared]]:
    """compare's methods by ``--methods`` name, each with the training method it runs."""
    return {c.name: (m, c) for m in registry().values() for c in m.compared}
