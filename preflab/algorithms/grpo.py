"""GRPO: group relative policy optimisation (Shao et al. 2024), on prompt-only data.

    preflab grpo --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

The RLHF road without a critic: K completions per prompt, and each one's advantage is its
reward standardised within the group, so there is no value model. Three roles: policy,
reference, reward. The loop is ``preflab.rl.loop`` (every RL method's), with the group's part
in ``preflab.rl.group`` (shared with RLOO); what is GRPO's own:

- Advantage ``A_k = (r_k - mean_j r_j) / (std_j r_j + 1e-4)`` (``preflab.losses.group_advantages``;
  Bessel-corrected std; a group of equal rewards gets 0). ``--scale-rewards batch`` divides
  by the batch's std instead, ``none`` not at all (Dr. GRPO, Liu et al. 2025).
- The KL is a loss term, not a reward: ``kl_coef * k3_t`` at every token, with
  ``k3 = exp(d) - d - 1``, ``d = log pi_ref(y_t) - log pi(y_t)`` under the current policy
  (Schulman's unbiased, non-negative estimator).
- Per-token importance weights ``exp(log pi - log pi_old)`` clipped to ``[1 - c, 1 + c_high]``;
  ``--importance-sampling-level sequence`` uses one weight per completion from the mean
  log-ratio (GSPO, Zheng et al. 2025).
- ``--loss-aggregation``: ``sequence`` (the paper), ``token`` (DAPO), ``fixed`` (Dr. GRPO).

Memory (``--memory-mode``) as RLOO: ``classic`` three models, ``shared`` one base with the
policy (and reward) adapter. Metric names follow TRL's GRPOTrainer (``reward``,
``reward_std``, ``frac_reward_zero_std``, ``kl``, ``entropy``, ``clip_ratio/*``,
``completions/*``, ``rewards/<source>/mean``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from preflab.algorithms import Compared, Method
from preflab.config import arg, parse_config
from preflab.losses import REWARD_SCALES, group_advantages
from preflab.rl.common import global_moments
from preflab.rl.group import GroupConfig, group_algorithm
from preflab.rl.loop import train
from preflab.training import session


@dataclass
class GRPOConfig(GroupConfig):
    """``preflab grpo``: the shared flags, the rollout and group flags, and GRPO's."""

    kl_coef: float = arg(0.04, "kl_coef (beta of Shao et al. 2024): weight of the per-token "
                         "k3 KL term in the loss; 0 drops it.", ge=0)
    scale_rewards: str = arg("group", "Divide the centred rewards by the std of the group (the "
                             "paper), of the batch, or none (Dr. GRPO).", choices=REWARD_SCALES)
    importance_sampling_level: str = arg("token", "token: one ratio per token (the paper); "
                                         "sequence: one per completion from the mean log-ratio "
                                         "(GSPO).", choices=("token", "sequence"))


def advantages(cfg: GRPOConfig, scores: Tensor, old: dict, mask: Tensor,
               run: session.Run) -> Tensor:
    rewards = scores.to(old["logprobs"].dtype).view(-1, cfg.num_generations)
    batch_std = None
    if cfg.scale_rewards == "batch" and run.ctx.enabled:
        batch_std = global_moments(rewards, run)[1]
    return group_advantages(rewards, scale=cfg.scale_rewards, batch_std=batch_std).view(-1)


GROUP = group_algorithm("grpo", advantages,
                        importance={"token": "token", "sequence": "sequence-mean"},
                        kl_estimator="k3", kl_in_loss=True)


METHOD = Method(
    name="grpo", road="rlhf",
    summary="GRPO on prompts: K completions each, group-normalised advantages, no value model",
    config=GRPOConfig, roles=("policy", "reward", "reference"), trains=("policy",),
    prior_seconds=80, memory=("critic-free",),
    compared=(Compared(
        "grpo", "GRPO (no critic)", "reward model (full fine-tuning), then GRPO: K completions "
        "per prompt, group-normalised advantages, the KL as a loss term; three models: policy, "
        "reward, reference", "GRPO, no value model (3 models)", shape="rlhf",
        # Dr. GRPO's unscaled advantages: with the group std, gold fell as KL ran to 6-7 (see
        # docs/algorithms/grpo.md)
        world={"learning_rate": 2e-4, "kl_coef": 0.1, "scale_rewards": "none",
               "rollout_batch_size": 16, "num_generations": 4, "num_iterations": 4,
               "num_minibatches": 4, "batch_size": 16, "max_steps": 60, "eval_every": 10},
        user={"eval_every": 20},
        real_cpu={"learning_rate": 1e-5, "kl_coef": 0.05, "rollout_batch_size": 4,
                  "num_generations": 4, "num_iterations": 1, "num_minibatches": 2,
                  "batch_size": 8, "max_steps": 12, "eval_every": 0}),),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GRPOConfig, argv, prog="preflab grpo", description=__doc__)
    session.run_command(lambda c: train(c, GROUP), cfg)
    return 0
