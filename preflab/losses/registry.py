"""Direct-preference losses as data: what each needs, so no code branches on a loss name.

A trainer resolves ``--loss NAME`` once with ``get_direct_loss`` and then asks the spec:
load a reference model? (``needs_reference``) reduce token log-probs by sum or mean?
(``logps``) add the SFT term on chosen, and with what weight? (``sft_weight``).
``compute_direct_loss`` calls any of them the same way.

A loss's own hyperparameters (beyond ``beta``) are declared with it (``LossSpec.params``, a
``LossParam`` each): the direct trainers get one flag per name in ``LOSS_PARAMS`` from here
(``preflab.training.direct``), and a value set away from its default for a loss that does not
declare it is refused. A new loss with a new hyperparameter is one entry here and its function
in ``direct.py``.

    name     fn           reference  logps  sft          its own hyperparameters
    sigmoid  dpo_loss     yes        sum    no
    cdpo     dpo_loss     yes        sum    no           label_smoothing
    ipo      ipo_loss     yes        mean   no
    hinge    hinge_loss   yes        sum    no
    robust   robust_loss  yes        sum    no           label_smoothing
    simpo    simpo_loss   no         mean   no           gamma
    cpo      cpo_loss     no         sum    yes (alpha)  cpo_alpha
    orpo     orpo_loss    no         mean   yes (1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from preflab.errors import ConfigError
from preflab.losses.direct import (
    cpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    orpo_loss,
    robust_loss,
    simpo_loss,
)


@dataclass(frozen=True)
class LossParam:
    """A hyperparameter a loss declares: the flag ``--NAME`` of the direct trainers."""

    default: float
    help: str
    ge: float | None = None
    """Lowest value the flag takes (inclusive); None: no bound."""
    lt: float | None = None
    """The flag's values stay below this; None: no bound."""


LABEL_SMOOTHING = LossParam(0.0, "Assumed label-flip rate eps for --loss cdpo and robust.",
                            ge=0, lt=0.5)
GAMMA = LossParam(0.5, "SimPO's target reward margin gamma (used by --loss simpo only).", ge=0)
CPO_ALPHA = LossParam(1.0, "CPO's weight alpha of the NLL term on the chosen completion (used "
                      "by --loss cpo only).", ge=0)


@dataclass(frozen=True)
class LossSpec:
    """One direct-preference loss and what it needs from the trainer."""

    name: str
    """The ``--loss`` value."""
    fn: Callable[..., tuple[Tensor, ...]]
    """The pure loss function in ``preflab.losses.direct``."""
    needs_reference: bool
    """Takes ``ref_chosen_logps`` / ``ref_rejected_logps`` (a reference model must run)."""
    paired: bool
    """Consumes (chosen, rejected) pairs; False would mean unpaired labels (as KTO)."""
    logps: str
    """How the caller reduces token log-probs per sequence: ``"sum"`` or ``"mean"``."""
    description: str
    """One line for ``--help`` and the docs."""
    params: dict[str, LossParam] = field(default_factory=dict)
    """Its own hyperparameters, passed to ``fn`` by name but for the one ``sft_weight`` names
    (``LOSS_PARAMS``: every loss's)."""
    sft_weight: float | str = 0.0
    """The caller adds ``w *`` the mean token NLL of the chosen completion to the loss: ``w`` is
    this number (ORPO: 1), or the value of the hyperparameter it names; 0: no SFT term."""
    extra_outputs: tuple[str, ...] = field(default=())
    """Names of what ``fn`` returns after ``(losses, chosen_rewards, rejected_rewards)``."""

    @property
    def adds_sft_term(self) -> bool:
        return self.sft_weight != 0.0

    def sft_weight_of(self, params: dict[str, float]) -> float:
        """The SFT term's weight under ``params`` (the run's values of ``LOSS_PARAMS``)."""
        if isinstance(self.sft_weight, str):
            return float(params[self.sft_weight])
        return float(self.sft_weight)


_REF = dict(needs_reference=True, paired=True)

DIRECT_LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            name="sigmoid",
            fn=dpo_loss,
            logps="sum",
            description="DPO (Rafailov et al. 2023): -log sigmoid(beta h)",
            **_REF,
        ),
        LossSpec(
            name="cdpo",
            fn=dpo_loss,
            logps="sum",
            params={"label_smoothing": LABEL_SMOOTHING},
            description="conservative DPO: (1-eps) DPO(h) + eps DPO(-h), eps = label_smoothing",
            **_REF,
        ),
        LossSpec(
            name="ipo",
            fn=ipo_loss,
            logps="mean",
            description="IPO (Azar et al. 2023): (h - 1/(2 beta))^2 on token-averaged log-probs",
            **_REF,
        ),
        LossSpec(
            name="hinge",
            fn=hinge_loss,
            logps="sum",
            description="SLiC hinge: relu(1 - beta h)",
            **_REF,
        ),
        LossSpec(
            name="robust",
            fn=robust_loss,
            logps="sum",
            params={"label_smoothing": LABEL_SMOOTHING},
            description="robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate eps",
            **_REF,
        ),
        LossSpec(
            name="simpo",
            fn=simpo_loss,
            needs_reference=False,
            paired=True,
            logps="mean",
            params={"gamma": GAMMA},
            description="SimPO (Meng et al. 2024): -log sigmoid(beta (avg_w - avg_l) - gamma), "
            "no reference",
        ),
        LossSpec(
            name="cpo",
            fn=cpo_loss,
            needs_reference=False,
            paired=True,
            logps="sum",
            params={"cpo_alpha": CPO_ALPHA},
            sft_weight="cpo_alpha",
            description="CPO (Xu et al. 2024): -log sigmoid(beta (log pi_w - log pi_l)) + "
            "alpha NLL(y_w), no reference",
        ),
        LossSpec(
            name="orpo",
            fn=orpo_loss,
            needs_reference=False,
            paired=True,
            logps="mean",
            sft_weight=1.0,
            description="ORPO (Hong et al. 2024): SFT NLL + beta * -log sigmoid(log odds ratio), "
            "no reference",
            extra_outputs=("log_odds_ratio",),
        ),
    )
}




def _all_params() -> dict[str, LossParam]:
    out: dict[str, LossParam] = {}
    for spec in DIRECT_LOSSES.values():
        for name, param in spec.params.items():
            if out.setdefault(name, param) != param:
                raise ValueError(f"losses declare {name!r} differently: one flag, one meaning")
    return out


LOSS_PARAMS: dict[str, LossParam] = _all_params()
"""Every loss's own hyperparameters by name: one flag each on the direct trainers."""


def get_direct_loss(name: str) -> LossSpec:
    """The spec for ``--loss name``; ``ConfigError`` listing the valid names otherwise."""
    try:
        return DIRECT_LOSSES[name]
    except KeyError:
        raise ConfigError(
            f"unknown direct-preference loss {name!r}",
            field="loss",
            expected="one of " + ", ".join(DIRECT_LOSSES),
        ) from None


def check_direct_loss_args(spec: LossSpec, *, beta: float, **params: float) -> None:
    """Reject settings ``spec`` would silently ignore or cannot take; call at start-up.
    ``params``: values of ``LOSS_PARAMS`` (one left out is at its default). Raises
    ``ConfigError`` naming the field."""
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}", field="beta")
    for name, value in params.items():
        if name not in LOSS_PARAMS:
            raise ValueError(f"no loss declares the hyperparameter {name!r}")
        if name not in spec.params:
            if value != LOSS_PARAMS[name].default and value:
                raise ConfigError(
                    f"loss {spec.name!r} does not use {name} (got {value})",
                    field=name,
                    expected=f"{LOSS_PARAMS[name].default:g}, or a loss that uses it: "
                    + ", ".join(n for n, s in DIRECT_LOSSES.items() if name in s.params),
                )
            continue
        param = spec.params[name]
        if (param.ge is not None and value < param.ge) or (param.lt is not None
                                                             and value >= param.lt):
            low = "" if param.ge is None else f"{param.ge:g} <= "
            high = "" if param.lt is None else f" < {param.lt:g}"
            raise ConfigError(
                f"{name} {value} is out of range for loss {spec.name!r}",
                field=name,
                expected=f"{low}{name}{high} ({param.help})",
            )


@dataclass
class DirectLossOutput:
    """What ``compute_direct_loss`` returns; all tensors ``[B]``.

    ``chosen_rewards`` / ``rejected_rewards`` are detached: ``beta * (log pi - log pi_ref)``
    for losses with a reference, ``beta * log pi`` (of the reduced log-probs the loss saw) for
    reference-free ones. ``extras`` holds the loss's further outputs by name (``LossSpec.
    extra_outputs``), e.g. ORPO's ``log_odds_ratio``.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


def compute_direct_loss(
    spec: LossSpec,
    *,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    beta: float,
    **params: float,
) -> DirectLossOutput:
    """Call ``spec.fn`` with exactly the arguments it takes; a trainer never branches on names.

    Log-probs are ``[B]``, reduced as ``spec.logps`` says. Reference log-probs are required
    when ``spec.needs_reference`` and ignored otherwise. ``params`` are values of
    ``LOSS_PARAMS``; one the loss does not declare must be 0 or its default
    (``check_direct_loss_args``), one it declares and that is left out takes its default. The
    SFT term of ``adds_sft_term`` losses is NOT added here: it needs token-level log-probs,
    which the caller has (``spec.sft_weight_of``).
    """
    check_direct_loss_args(spec, beta=beta, **params)
    args: list[Tensor] = [policy_chosen_logps, policy_rejected_logps]
    kwargs: dict[str, float] = {"beta": beta}
    if spec.needs_reference:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(f"loss {spec.name!r} needs ref_chosen_logps and ref_rejected_logps")
        args += [ref_chosen_logps, ref_rejected_logps]
    for name, param in spec.params.items():
        if name != spec.sft_weight:  # the SFT term's weight is the caller's, not the function's
            kwargs[name] = params.get(name, param.default)
    losses, chosen_rewards, rejected_rewards, *rest = spec.fn(*args, **kwargs)
    extras = dict(zip(spec.extra_outputs, rest, strict=True))
    return DirectLossOutput(losses, chosen_rewards, rejected_rewards, extras)
