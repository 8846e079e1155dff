"""The RLHF road's math: the reward-model loss, GAE, whitening, PPO's clipped losses, KL.

Shapes: ``[B]`` per sequence, ``[B, T]`` per response token. ``mask`` marks the valid
response tokens (1/True) of a ``[B, T]`` tensor; masked positions never contribute, and
outputs at masked positions are zero. Following "The N+ implementation details of RLHF
with PPO" (Huang et al. 2024), the PPO losses are masked means over all valid tokens of
the (mini)batch, and statistics come back as detached 0-d tensors (no host sync here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is true (all positions if ``mask`` is None).

    An all-masked input gives 0, not NaN.
    """
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased``)."""
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    m = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = m.sum()
    var = (((x - mean) ** 2) * m).sum() / n.clamp(min=1)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return var


def reward_model_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | float | None = None
) -> tuple[Tensor, Tensor]:
    """Bradley-Terry reward-model loss: ``-log sigmoid(r_w - r_l - margin)``.

    ``chosen_scores``, ``rejected_scores``: ``[B]`` scalar rewards; ``margin``: optional
    ``[B]`` or scalar required gap (as in Llama 2's margin loss).

    Returns ``(losses [B], score_margins [B])`` where ``score_margins = r_w - r_l`` (without
    the required margin), detached; ``(score_margins > 0)`` is the pairwise accuracy.
    """
    diff = chosen_scores - rejected_scores
    logits = diff if margin is None else diff - margin
    return -F.logsigmoid(logits), diff.detach()


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the valid tokens.

    ``rewards``, ``values``, ``mask``: ``[B, T]``. The recursion runs backwards over the
    valid tokens of each row only (masked positions are skipped, so left, right and inner
    padding all work) and bootstraps with value 0 after a row's last valid token:

        delta_t = r_t + gamma * V_next - V_t
        A_t     = delta_t + gamma * gae_lambda * A_next

    where ``next`` is the next VALID token of the row. Returns ``(advantages [B, T],
    returns [B, T])`` with ``returns = advantages + values``; both zero at masked positions
    and both detached (they are targets, not part of the graph).
    """
    rewards, values = rewards.detach(), values.detach()
    valid = mask.to(torch.bool)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_advantage = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * gae_lambda * next_advantage
        v = valid[:, t]
        advantages[:, t] = torch.where(v, adv_t, torch.zeros_like(adv_t))
        next_value = torch.where(v, values[:, t], next_value)
        next_advantage = torch.where(v, adv_t, next_advantage)
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


def whiten(
    x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8
) -> Tensor:
    """Normalise ``x`` to mean 0, variance 1 over the masked positions.

    Mean and (Bessel-corrected) variance are taken over all positions where ``mask`` is
    true. With ``shift_mean=False`` the mean is added back (only the scale changes), as is
    done for rewards. Masked positions of the output are 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    if mask is not None:
        out = torch.where(mask.to(torch.bool), out, torch.zeros_like(out))
    return out


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_range: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017), per token, masked mean.

    ``logprobs`` (with grad), ``old_logprobs`` (rollout-time), ``advantages``, ``mask``:
    ``[B, T]``. With ``ratio = exp(logprobs - old_logprobs)``:

        loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))

    Returns ``(loss scalar, stats)`` with detached 0-d tensors ``stats["clipfrac"]`` (share
    of valid tokens where the clipped term is the larger, i.e. active), ``stats["approxkl"]``
    ``= 0.5 * masked_mean((logprobs - old_logprobs)^2)`` and ``stats["ratio"]`` (its mean).
    """
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range_value: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped value loss, per token, masked mean.

    ``values`` (with grad), ``old_values`` (rollout-time), ``returns``, ``mask``: ``[B, T]``.

        v_clip = old_values + clip(values - old_values, -c, c)
        loss   = 0.5 * masked_mean(max((values - R)^2, (v_clip - R)^2))

    Returns ``(loss scalar, stats)`` with ``stats["clipfrac"]``: the share of valid tokens
    where the clipped error is the larger (detached 0-d tensor).
    """
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped = (values - returns) ** 2
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).to(values.dtype), mask)}
    return loss, stats


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL").

    With ``d = ref_logprobs - logprobs = log r`` (``r = pi_ref / pi``), on tokens sampled from pi:

        k1 = -d = log pi - log pi_ref         unbiased, can be negative per token
        k2 = d^2 / 2                          biased, low variance, >= 0
        k3 = (r - 1) - log r = expm1(d) - d   unbiased, >= 0

    Any shape; returns the same shape. ``kind`` is one of ``KL_ESTIMATORS``.
    """
    d = ref_logprobs - logprobs
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")


# --- critic-free policy gradients: RLOO and GRPO --------------------------------------------
IMPORTANCE_LEVELS = ("token", "sequence-sum", "sequence-mean")
LOSS_AGGREGATIONS = ("token", "sequence", "fixed")
REWARD_SCALES = ("group", "batch", "none")


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024), ``[N, K]`` -> ``[N, K]``.

    ``rewards[n, k]`` is the (sequence) reward of prompt ``n``'s ``k``-th completion. Each
    completion's baseline is the mean reward of the other ``K - 1`` completions of its prompt:

        A_k = r_k - (sum_j r_j - r_k) / (K - 1) = K / (K - 1) * (r_k - mean_j r_j)
    """
    K = rewards.shape[-1]
    if K < 2:
        raise ValueError("the leave-one-out baseline needs K >= 2 completions per prompt")
    baseline = (rewards.sum(-1, keepdim=True) - rewards) / (K - 1)
    return rewards - baseline


def group_advantages(rewards: Tensor, *, scale: str = "group", eps: float = 1e-4,
                     batch_std: Tensor | None = None) -> Tensor:
    """GRPO's group-relative advantages (Shao et al. 2024), ``[N, K]`` -> ``[N, K]``.

        A_k = (r_k - mean_j r_j) / (std + eps)

    ``scale``: ``group`` divides by the (Bessel-corrected) std of the prompt's K rewards, as the
    paper; ``batch`` by the std of all rewards of the batch (``batch_std`` if given: under
    several processes, the std of every process's rewards); ``none`` does not divide (Dr. GRPO,
    Liu et al. 2025: the scale biases toward prompts whose rewards barely vary). A group whose
    rewards are all equal gets advantage 0 in every mode (0 / (0 + eps)).
    """
    if scale not in REWARD_SCALES:
        raise ValueError(f"unknown reward scale {scale!r}; expected one of {REWARD_SCALES}")
    if rewards.shape[-1] < 2:
        raise ValueError("group advantages need K >= 2 completions per prompt")
    centred = rewards - rewards.mean(-1, keepdim=True)
    if scale == "none":
        return centred
    if scale == "group":
        std = rewards.std(-1, keepdim=True)
    else:
        std = rewards.std() if batch_std is None else batch_std
    return centred / (std + eps)


def normalize(x: Tensor, *, eps: float = 1e-4, mean: Tensor | None = None,
              std: Tensor | None = None) -> Tensor:
    """``(x - mean) / (std + eps)`` over all of ``x`` (Bessel-corrected std), or with the
    ``mean`` and ``std`` given (those of every process)."""
    mean = x.mean() if mean is None else mean
    std = x.std() if std is None else std
    return (x - mean) / (std + eps)


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_range: float,
    clip_range_high: float | None = None,
    importance: str = "token",
    aggregation: str = "sequence",
    max_length: int | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate with one advantage per sequence, as RLOO and GRPO use it.

    ``logprobs`` (with grad), ``old_logprobs`` (rollout-time), ``mask``: ``[B, T]``;
    ``advantages``: ``[B]``. The importance weight ``w`` is

        token          w_t = exp(log pi_t - log pi_old_t)                      (PPO, GRPO)
        sequence-sum   w   = exp(sum_t (log pi_t - log pi_old_t))   one action per completion (RLOO)
        sequence-mean  w   = exp(mean_t (log pi_t - log pi_old_t))                 (GSPO)

    and the per-token loss ``l_t = -min(w A, clip(w, 1 - c, 1 + c_high) A)``, plus
    ``kl_coef * k3_t`` when ``ref_logprobs`` is given (GRPO's KL term: ``k3 = exp(d) - d - 1``,
    ``d = log pi_ref - log pi``, with gradient through ``log pi``). ``aggregation``:

        sequence   mean over sequences of each sequence's token mean       (GRPO paper)
        token      sum over every valid token / number of valid tokens     (DAPO)
        fixed      sum over every valid token / (B * max_length)           (Dr. GRPO)

    Returns ``(loss, stats)``; stats (detached 0-d): ``clip_ratio/low_mean`` (share clipped
    below with A < 0), ``clip_ratio/high_mean`` (above with A > 0), ``clip_ratio/region_mean``,
    each over valid tokens (token level) or sequences (sequence level), and ``kl`` (mean k3
    per valid token, when ``ref_logprobs`` is given).
    """
    if importance not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance level {importance!r}; expected one of "
                         f"{IMPORTANCE_LEVELS}")
    if aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; expected one of "
                         f"{LOSS_AGGREGATIONS}")
    if aggregation == "fixed" and not max_length:
        raise ValueError("aggregation 'fixed' needs max_length")
    m = mask.to(logprobs.dtype)
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(-1)  # [B, 1]
    log_ratio = (logprobs - old_logprobs.detach()) * m
    if importance == "token":
        log_w = log_ratio
    elif importance == "sequence-sum":
        log_w = log_ratio.sum(-1, keepdim=True)
    else:
        log_w = log_ratio.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    w = torch.exp(log_w)
    high = clip_range if clip_range_high is None else clip_range_high
    per_token = -torch.minimum(w * adv, torch.clamp(w, 1.0 - clip_range, 1.0 + high) * adv)
    per_token = per_token.expand_as(logprobs)
    kl = None
    if ref_logprobs is not None:
        kl = kl_per_token(logprobs, ref_logprobs.detach(), "k3")
        per_token = per_token + kl_coef * kl
    if aggregation == "sequence":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif aggregation == "token":
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    else:
        loss = (per_token * m).sum() / (logprobs.shape[0] * max_length)
    with torch.no_grad():
        low = ((w < 1.0 - clip_range) & (adv < 0)).to(logprobs.dtype)
        high_clipped = ((w > 1.0 + high) & (adv > 0)).to(logprobs.dtype)
        where = mask if importance == "token" else None
        if importance != "token":
            low, high_clipped = low.squeeze(-1), high_clipped.squeeze(-1)
        stats = {
            "clip_ratio/low_mean": masked_mean(low, where),
            "clip_ratio/high_mean": masked_mean(high_clipped, where),
            "clip_ratio/region_mean": masked_mean(torch.maximum(low, high_clipped), where),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl, mask)
    return loss, stats
