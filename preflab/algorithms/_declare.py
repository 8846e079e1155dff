"""What an algorithm file declares: ``Method`` and its compare entries, ``Compared``. Algorithm
files import them from ``preflab.algorithms``, which loads this module only then, so that
reading the list of commands (``preflab.algorithms.commands``, every ``preflab`` start) does
not import ``dataclasses``."""

from __future__ import annotations

from dataclasses import dataclass, field

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
