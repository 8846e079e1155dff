"""Direct preference losses: the DPO family, SimPO, CPO, ORPO and KTO.

Every function here is a pure function of per-sequence log-probabilities of shape ``[B]``
(already reduced over completion tokens by the caller, summed or averaged as the registry
says) and returns a tuple whose first element is the per-example loss ``[B]``. Reduce it
(usually ``.mean()``) in the trainer. Implicit rewards come back detached: they are for
logging (``rewards/chosen``, ``rewards/rejected``), never for gradients.

Notation (docs/architecture.md, contract: losses): for a pair (y_w, y_l)

    h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]

Every log-sigmoid is ``F.logsigmoid`` (never ``log(sigmoid(x))``), so the losses and their
gradients stay finite for logits of any magnitude.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _logratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(chosen_logratios, rejected_logratios, h)``, each ``[B]``."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    return chosen, rejected, chosen - rejected


def _implicit_rewards(chosen: Tensor, rejected: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """DPO's implicit rewards ``beta * (log pi - log pi_ref)``, detached."""
    return (beta * chosen).detach(), (beta * rejected).detach()


def _smoothed_dpo(h: Tensor, beta: float, eps: float) -> Tensor:
    """``(1 - eps) * DPO(h) + eps * DPO(-h)`` with ``DPO(h) = -log sigmoid(beta h)``."""
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023): ``-log sigmoid(beta * h)``; cDPO when ``label_smoothing > 0``.

    With label smoothing eps (the probability that a label is flipped) the loss is
    ``(1 - eps) * DPO(h) + eps * DPO(-h)``. All inputs ``[B]``, summed log-probs.

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``; the rewards are
    ``beta * (log pi - log pi_ref)``, detached.
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = _smoothed_dpo(h, beta, label_smoothing)
    return (losses, *_implicit_rewards(chosen, rejected, beta))


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al. 2023): ``(h - 1/(2 beta))^2``, minimised at margin ``h = 1/(2 beta)``.

    The paper writes h with sequence log-likelihoods; common practice (and preflab's
    registry) feeds token-averaged log-probs, which keeps 1/(2 beta) on a length-free scale.

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` as in ``dpo_loss``.
    """
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return (losses, *_implicit_rewards(chosen, rejected, beta))


def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """SLiC hinge: ``relu(1 - beta * h)``; zero (and no gradient) once ``beta * h >= 1``.

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` as in ``dpo_loss``.
    """
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = torch.relu(1.0 - beta * h)
    return (losses, *_implicit_rewards(chosen, rejected, beta))


def robust_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Robust DPO (Chowdhury et al. 2024): ``[(1-eps) DPO(h) - eps DPO(-h)] / (1 - 2 eps)``.

    An unbiased estimate of the clean-label DPO loss when each label is flipped with
    probability ``eps = label_smoothing``, which must lie in ``[0, 0.5)``.

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` as in ``dpo_loss``.
    """
    eps = label_smoothing
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"robust_loss needs 0 <= label_smoothing < 0.5, got {eps}")
    chosen, rejected, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (
        1.0 - 2.0 * eps
    )
    return (losses, *_implicit_rewards(chosen, rejected, beta))


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float,
    gamma: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al. 2024), no reference: ``-log sigmoid(beta avg_w - beta avg_l - gamma)``.

    Inputs are length-AVERAGED log-probs ``log pi(y) / |y|``, ``[B]``; ``gamma`` is the
    target reward margin (in reward units, not divided by beta).

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` with rewards
    ``beta * avg logp``, detached.
    """
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma
    losses = -F.logsigmoid(logits)
    return (losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, beta))


def cpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """CPO's preference term (Xu et al. 2024), no reference: ``-log sigmoid(beta (log pi(y_w) -
    log pi(y_l)))`` on SUMMED log-probs, DPO with the reference's log-ratio left out.

    The full CPO loss adds ``cpo_alpha`` times the NLL of the chosen completion (the paper's
    L_NLL, weight 1; TRL's ``cpo_alpha``), which the caller computes as the mean over the
    chosen completion's tokens (``LossSpec.sft_weight``).

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` with rewards
    ``beta * log pi``, detached.
    """
    losses = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
    return (losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, beta))


def log_odds(logps: Tensor) -> Tensor:
    """``log(p / (1 - p))`` from ``logps = log p <= 0``, computed stably.

    ``log(1 - p) = log(-expm1(logp))`` is exact near ``p = 1`` and ``log1p(-exp(logp))`` near
    ``p = 0``; the switch at ``log p = -log 2`` is the usual one (Maechler 2012). ``log p`` is
    clamped below 0 by one float epsilon so that ``p = 1`` gives a large finite log-odds.
    """
    tiny = torch.finfo(logps.dtype).eps if logps.is_floating_point() else 1e-7
    x = logps.clamp(max=-tiny)
    # Both branches are evaluated by torch.where; clamp each input so the unused one stays
    # finite too (a NaN in the unused branch would still poison the gradient).
    near_one = torch.log(-torch.expm1(x.clamp(min=-0.6931471805599453)))
    near_zero = torch.log1p(-torch.exp(x.clamp(max=-0.6931471805599453)))
    log1m_p = torch.where(x > -0.6931471805599453, near_one, near_zero)
    return x - log1m_p


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ORPO's odds-ratio term (Hong et al. 2024): ``beta * -log sigmoid(logodds_w - logodds_l)``.

    Inputs are length-averaged log-probs ``log p`` (so ``p`` is the per-token geometric mean
    probability), ``[B]``; odds ``= p / (1 - p)``. ``beta`` is the paper's lambda. The full
    ORPO loss adds the SFT negative log-likelihood of the chosen completion, which the caller
    computes (``LossSpec.adds_sft_term``).

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B], log_odds_ratio [B])``;
    rewards are ``beta * avg logp`` and the log odds ratio ``logodds_w - logodds_l``, both
    detached.
    """
    log_odds_ratio = log_odds(policy_chosen_logps) - log_odds(policy_rejected_logps)
    losses = -beta * F.logsigmoid(log_odds_ratio)
    chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, beta
    )
    return losses, chosen_rewards, rejected_rewards, log_odds_ratio.detach()


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl_estimate: Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO (Ethayarajh et al. 2024) on unpaired examples.

    With ``r = log pi(y) - log pi_ref(y)`` and reference point ``z0 = max(0, kl_estimate)``
    (no gradient; the caller estimates it from mismatched (x, y') pairs):

        desirable:    w_D * (1 - sigmoid(beta * (r - z0)))
        undesirable:  w_U * (1 - sigmoid(beta * (z0 - r)))

    ``1 - sigmoid(t)`` is computed as ``sigmoid(-t)``. Shapes: ``policy_logps``, ``ref_logps``
    ``[B]``; ``desirable`` bool ``[B]``; ``kl_estimate`` a scalar (tensor or float).

    Returns ``(losses [B], rewards [B])`` with rewards ``beta * r``, detached; split them by
    ``desirable`` for ``rewards/chosen`` and ``rewards/rejected``.
    """
    desirable = desirable.to(torch.bool)
    r = policy_logps - ref_logps
    z0 = torch.as_tensor(kl_estimate, dtype=r.dtype, device=r.device).detach().clamp(min=0)
    desirable_losses = desirable_weight * torch.sigmoid(-beta * (r - z0))
    undesirable_losses = undesirable_weight * torch.sigmoid(-beta * (z0 - r))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return losses, (beta * r).detach()
