"""Direct-preference losses as data: what each needs, so no code branches on a loss name.

A trainer resolves ``--loss NAME`` once with ``get_direct_loss`` and then asks the spec:
load a reference model? (``needs_reference``) reduce token log-probs by sum or mean?
(``logps``) add the SFT term on chosen? (``adds_sft_term``). ``compute_direct_loss`` calls
any of them the same way.

    name     fn           reference  logps  sft  label_smoothing  gamma
    sigmoid  dpo_loss     yes        sum    no   no               no
    cdpo     dpo_loss     yes        sum    no   yes              no
    ipo      ipo_loss     yes        mean   no   no               no
    hinge    hinge_loss   yes        sum    no   no               no
    robust   robust_loss  yes        sum    no   yes              no
    simpo    simpo_loss   no         mean   no   no               yes
    orpo     orpo_loss    no         mean   yes  no               no
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from preflab.errors import ConfigError
from preflab.losses.direct import (
    dpo_loss,
    hinge_loss,
    ipo_loss,
    orpo_loss,
    robust_loss,
    simpo_loss,
)


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
    adds_sft_term: bool
    """The caller adds the mean token NLL of the chosen completion to the loss (ORPO)."""
    uses_label_smoothing: bool
    """Takes ``label_smoothing`` (the assumed label-flip probability eps)."""
    uses_gamma: bool
    """Takes ``gamma`` (SimPO's target reward margin)."""
    description: str
    """One line for ``--help`` and the docs."""
    extra_outputs: tuple[str, ...] = field(default=())
    """Names of what ``fn`` returns after ``(losses, chosen_rewards, rejected_rewards)``."""


_REF = dict(needs_reference=True, paired=True, adds_sft_term=False, uses_gamma=False)

DIRECT_LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            name="sigmoid",
            fn=dpo_loss,
            logps="sum",
            uses_label_smoothing=False,
            description="DPO (Rafailov et al. 2023): -log sigmoid(beta h)",
            **_REF,
        ),
        LossSpec(
            name="cdpo",
            fn=dpo_loss,
            logps="sum",
            uses_label_smoothing=True,
            description="conservative DPO: (1-eps) DPO(h) + eps DPO(-h), eps = label_smoothing",
            **_REF,
        ),
        LossSpec(
            name="ipo",
            fn=ipo_loss,
            logps="mean",
            uses_label_smoothing=False,
            description="IPO (Azar et al. 2023): (h - 1/(2 beta))^2 on token-averaged log-probs",
            **_REF,
        ),
        LossSpec(
            name="hinge",
            fn=hinge_loss,
            logps="sum",
            uses_label_smoothing=False,
            description="SLiC hinge: relu(1 - beta h)",
            **_REF,
        ),
        LossSpec(
            name="robust",
            fn=robust_loss,
            logps="sum",
            uses_label_smoothing=True,
            description="robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate eps",
            **_REF,
        ),
        LossSpec(
            name="simpo",
            fn=simpo_loss,
            needs_reference=False,
            paired=True,
            logps="mean",
            adds_sft_term=False,
            uses_label_smoothing=False,
            uses_gamma=True,
            description="SimPO (Meng et al. 2024): -log sigmoid(beta (avg_w - avg_l) - gamma), "
            "no reference",
        ),
        LossSpec(
            name="orpo",
            fn=orpo_loss,
            needs_reference=False,
            paired=True,
            logps="mean",
            adds_sft_term=True,
            uses_label_smoothing=False,
            uses_gamma=False,
            description="ORPO (Hong et al. 2024): SFT NLL + beta * -log sigmoid(log odds ratio), "
            "no reference",
            extra_outputs=("log_odds_ratio",),
        ),
    )
}


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


def check_direct_loss_args(spec: LossSpec, *, beta: float, label_smoothing: float, gamma: float):
    """Reject settings ``spec`` would silently ignore or cannot take; call at start-up.

    Raises ``ConfigError`` naming the field.
    """
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}", field="beta")
    if label_smoothing and not spec.uses_label_smoothing:
        raise ConfigError(
            f"loss {spec.name!r} does not use label_smoothing (got {label_smoothing})",
            field="label_smoothing",
            expected="0, or a loss that uses it: "
            + ", ".join(n for n, s in DIRECT_LOSSES.items() if s.uses_label_smoothing),
        )
    if spec.uses_label_smoothing and not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(
            f"label_smoothing {label_smoothing} is out of range for loss {spec.name!r}",
            field="label_smoothing",
            expected="0 <= label_smoothing < 0.5 (the assumed label-flip probability)",
        )
    if gamma and not spec.uses_gamma:
        raise ConfigError(
            f"loss {spec.name!r} does not use gamma (got {gamma})",
            field="gamma",
            expected="0, or a loss that uses it: "
            + ", ".join(n for n, s in DIRECT_LOSSES.items() if s.uses_gamma),
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
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
) -> DirectLossOutput:
    """Call ``spec.fn`` with exactly the arguments it takes; a trainer never branches on names.

    Log-probs are ``[B]``, reduced as ``spec.logps`` says. Reference log-probs are required
    when ``spec.needs_reference`` and ignored otherwise. Settings the loss does not use must
    be 0 (``check_direct_loss_args``). The SFT term of ``adds_sft_term`` losses is NOT added
    here: it needs token-level log-probs, which the caller has.
    """
    check_direct_loss_args(spec, beta=beta, label_smoothing=label_smoothing, gamma=gamma)
    args: list[Tensor] = [policy_chosen_logps, policy_rejected_logps]
    kwargs: dict[str, float] = {"beta": beta}
    if spec.needs_reference:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(f"loss {spec.name!r} needs ref_chosen_logps and ref_rejected_logps")
        args += [ref_chosen_logps, ref_rejected_logps]
    if spec.uses_label_smoothing:
        kwargs["label_smoothing"] = label_smoothing
    if spec.uses_gamma:
        kwargs["gamma"] = gamma
    losses, chosen_rewards, rejected_rewards, *rest = spec.fn(*args, **kwargs)
    extras = dict(zip(spec.extra_outputs, rest, strict=True))
    return DirectLossOutput(losses, chosen_rewards, rejected_rewards, extras)
