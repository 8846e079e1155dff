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

import ast
import functools
import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path

ROADS = ("sft", "reward", "direct", "rlhf")
"""sft: supervised fine-tuning; reward: a reward model; direct: preference data straight into
the policy (the article's DPO road); rlhf: a reward signal and reinforcement learning."""

SHAPES = ("direct", "rlhf", "online")
"""How compare runs a method from the SFT checkpoint: ``direct`` (one stage on the pairs),
``rlhf`` (a reward model on the pairs, then the method on the prompts with ``--reward``),
``online`` (a reward model, then the method on the prompts with ``--judge``)."""


@dataclass(frozen=True)
class Compared:
    """One way ``preflab compare`` runs a method (``--methods NAME``); a method may offer
    several (the dpo command: DPO, IPO, SimPO, CPO, DPO with a precomputed reference)."""

    name: str
    label: str
    """Its name in the report's tables and figures."""
    description: str
    memory_label: str
    """What the memory figure holds, e.g. ``RLHF, classic (4 models)``."""
    shape: str = "direct"
    """One of ``SHAPES``."""
    flags: dict = field(default_factory=dict)
    """Flags every run of it passes (``{"loss": "ipo"}``)."""
    section: str = ""
    """Its hyperparameter section in compare's --config (default: ``name``)."""
    world: dict = field(default_factory=dict)
    """Its hyperparameters on the built-in world (1.1M parameters, trained from scratch)."""
    user: dict = field(default_factory=dict)
    """Over the command's defaults on the user's data (the papers' values)."""
    real_cpu: dict | None = None
    """For ``--preset real-cpu`` (a ~100M model on 2 CPU cores); None: not in that preset."""
    reward_section: str = "rm"
    """The reward-model stage's section (shapes ``rlhf`` and ``online``)."""
    trains: tuple[str, ...] = ()
    """Roles its last stage trains (default: the method's ``trains``)."""
    plan: str = ""
    """The plan row its memory is counted by, when compare checks ``--gpu-memory`` (default:
    the method's first ``memory`` kind)."""

    @property
    def hyper_section(self) -> str:
        return self.section or self.name


@dataclass(frozen=True)
class Method:
    name: str
    """The command: ``preflab NAME``."""
    road: str
    """One of ``ROADS``."""
    summary: str
    """Its line in ``preflab --help``."""
    config: type
    """Its Config dataclass. Its own hyperparameters are the fields it adds to
    ``config.TrainConfig`` (``Method.knobs``); a loss's own are declared with the loss."""
    roles: tuple[str, ...]
    """Models it holds: policy, reference, reward, value (a reward function holds none)."""
    trains: tuple[str, ...]
    """Roles whose weights it trains."""
    prior_seconds: float
    """One run on the built-in world's model with compare's settings: the harness's first
    guess at its time, before a run has been measured."""
    memory: tuple[str, ...] = ()
    """The ways ``preflab plan`` counts its memory, a row each (``preflab.compare.plan.KINDS``:
    ``dpo-copy``, ``ppo-classic``, ``critic-free``, ...)."""
    compared: tuple[Compared, ...] = ()
    module: str = ""
    """Filled by ``registry()``: the module that declared it."""

    def main(self, argv: list[str] | None = None) -> int:
        return importlib.import_module(self.module).main(argv)

    def knobs(self, loss: str = "") -> tuple[int, int]:
        """(hyperparameters of its own, all it exposes): its config's fields beyond
        ``TrainConfig``'s, and all of them, leaving out those that are not hyperparameters and
        the loss hyperparameters the run's ``loss`` (default: its config's) does not use."""
        from dataclasses import MISSING, fields

        from preflab.config import NOT_HYPERPARAMETERS, TrainConfig
        from preflab.losses import LOSS_PARAMS, get_direct_loss

        declared = {f.name: f for f in fields(self.config)}
        unused: set[str] = set()
        if "loss" in declared and declared["loss"].default is not MISSING:
            used = get_direct_loss(loss or declared["loss"].default).params
            unused = set(LOSS_PARAMS) - set(used)
        shared = {f.name for f in fields(TrainConfig)} - NOT_HYPERPARAMETERS
        own = set(declared) - NOT_HYPERPARAMETERS - unused
        return len(own - shared), len(own)


FOLDER = Path(__file__).parent


def _files() -> list[Path]:
    return sorted(p for p in FOLDER.glob("*.py") if p.name != "__init__.py")


def _literal(call: ast.Call, key: str) -> str:
    for keyword in call.keywords:
        if keyword.arg == key:
            return ast.literal_eval(keyword.value)
    raise ValueError(f"METHOD = Method(...) gives no {key}=")


@functools.cache
def commands() -> dict[str, tuple[str, str]]:
    """``{command: (module, summary)}`` from each file's ``METHOD = Method(name=..., road=...,
    summary=...)`` read as text, so ``preflab --help`` lists the methods without importing
    torch; in the order of ``ROADS``, then by name."""
    found = []
    for path in _files():
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets]
                    == ["METHOD"] and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", "") == "Method"):
                road = _literal(node.value, "road")
                if road not in ROADS:
                    raise ValueError(f"{path.name}: METHOD's road {road!r} is not one of {ROADS}")
                found.append((ROADS.index(road), _literal(node.value, "name"),
                              f"{__name__}.{path.stem}", _literal(node.value, "summary")))
    return {name: (module, summary) for _, name, module, summary in sorted(found)}


@functools.cache
def registry() -> dict[str, Method]:
    """Every method by command name, each module imported (torch with it)."""
    out = {}
    for name, (module_name, _) in commands().items():
        method = importlib.import_module(module_name).METHOD
        if not isinstance(method, Method) or method.name != name:
            raise TypeError(f"{module_name}.METHOD is not the Method named {name!r}")
        out[name] = replace(method, module=module_name)
    return out


def compared() -> dict[str, tuple[Method, Compared]]:
    """compare's methods by ``--methods`` name, each with the training method it runs."""
    return {c.name: (m, c) for m in registry().values() for c in m.compared}
