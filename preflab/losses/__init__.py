"""Preference-learning losses as pure functions of tensors; imports only torch.

``direct``: the DPO family, SimPO, ORPO, KTO. ``rl``: reward-model loss, GAE, whitening,
PPO's clipped losses, KL estimators; RLOO's and GRPO's advantages and clipped loss. ``registry``: each direct loss's needs as data.

May import: errors.
"""

from preflab.losses.direct import (
    cpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    log_odds,
    orpo_loss,
    robust_loss,
    simpo_loss,
)
from preflab.losses.registry import (
    DIRECT_LOSSES,
    LOSS_PARAMS,
    DirectLossOutput,
    LossParam,
    LossSpec,
    check_direct_loss_args,
    compute_direct_loss,
    get_direct_loss,
)
from preflab.losses.rl import (
    IMPORTANCE_LEVELS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    REWARD_SCALES,
    clipped_policy_loss,
    gae,
    group_advantages,
    kl_per_token,
    masked_mean,
    masked_var,
    normalize,
    ppo_policy_loss,
    ppo_value_loss,
    reward_model_loss,
    rloo_advantages,
    whiten,
)

__all__ = [
    "DIRECT_LOSSES",
    "LOSS_PARAMS",
    "LossParam",
    "KL_ESTIMATORS",
    "DirectLossOutput",
    "IMPORTANCE_LEVELS",
    "LOSS_AGGREGATIONS",
    "REWARD_SCALES",
    "clipped_policy_loss",
    "group_advantages",
    "normalize",
    "rloo_advantages",
    "LossSpec",
    "check_direct_loss_args",
    "compute_direct_loss",
    "dpo_loss",
    "gae",
    "get_direct_loss",
    "hinge_loss",
    "ipo_loss",
    "kl_per_token",
    "kto_loss",
    "log_odds",
    "masked_mean",
    "masked_var",
    "cpo_loss",
    "orpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reward_model_loss",
    "robust_loss",
    "simpo_loss",
    "whiten",
]
