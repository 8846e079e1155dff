"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024), on prompt-only data.

    preflab rloo --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

The RLHF road without a critic: K completions per prompt, and each one's baseline is the mean
reward of the other K - 1, so there is no value model. Three roles: policy, reference, reward.
The loop is ``preflab.rl.loop`` (every RL method's), with the group's part in
``preflab.rl.group`` (shared with GRPO); what is RLOO's own:

- The KL penalty is folded into the sequence reward, as in the paper: with the rollout-time
  log-probs, ``R_k = score_k - kl_coef * sum_t (log pi(y_t) - log pi_ref(y_t))`` (the k1
  estimate, summed over the completion's tokens).
- Advantage ``A_k = R_k - (sum_j R_j - R_k) / (K - 1)`` (``preflab.losses.rloo_advantages``);
  ``--normalize-advantages`` then standardises them over the batch (every process's).
- The completion is one action: the importance weight is ``exp(sum_t log pi/pi_old)`` and
  the loss ``-min(w A, clip(w, 1 - c, 1 + c) A)`` per completion, averaged over completions
  (``--importance-sampling-level token`` weighs each token instead, as PPO does).

Memory (``--memory-mode``): ``classic`` holds policy, reference and reward as separate models;
``shared`` holds one frozen base: the policy is a LoRA adapter, the reference the base with
adapters off, the reward a LoRA adapter on the same base (``preflab rm --lora-rank``) or a
function. Metric names follow TRL's RLOOTrainer: ``reward``, ``reward_std``,
``frac_reward_zero_std``, ``kl``, ``entropy``, ``clip_ratio/*``, ``completions/*``,
``rewards/<source>/mean``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from preflab.algorithms import Compared, Method
from preflab.config import arg, parse_config
from preflab.losses import kl_per_token, normalize, rloo_advantages
from preflab.rl.common import global_moments
from preflab.rl.group import GroupConfig, group_algorithm
from preflab.rl.loop import train
from preflab.rl.tensors import sequence_sum
from preflab.training import session


@dataclass
class RLOOConfig(GroupConfig):
    """``preflab rloo``: the shared flags, the rollout and group flags, and RLOO's."""

    kl_coef: float = arg(0.05, "kl_coef: weight of the KL penalty, folded into each "
                         "completion's reward (k1, summed over its tokens).", ge=0)
    normalize_advantages: bool = arg(False, "Standardise the advantages over the batch (mean 0, "
                                     "std 1, every process's).")
    importance_sampling_level: str = arg("sequence", "sequence: one ratio per completion, "
                                         "exp of the summed log-ratio (the completion is one "
                                         "action); token: one ratio per token, as PPO.",
                                         choices=("sequence", "token"))


def advantages(cfg: RLOOConfig, scores: Tensor, old: dict, mask: Tensor,
               run: session.Run) -> Tensor:
    kl = sequence_sum(kl_per_token(old["logprobs"], old["ref_logprobs"], "k1"), mask)
    rewards = scores.to(kl.dtype) - cfg.kl_coef * kl
    adv = rloo_advantages(rewards.view(-1, cfg.num_generations)).view(-1)
    if cfg.normalize_advantages:
        mean, std = global_moments(adv, run)
        adv = normalize(adv, mean=mean, std=std)
    return adv


GROUP = group_algorithm("rloo", advantages,
                        importance={"sequence": "sequence-sum", "token": "token"},
                        kl_estimator="k1", kl_in_loss=False)


METHOD = Method(
    name="rloo", road="rlhf",
    summary="RLOO on prompts: K completions each, the leave-one-out baseline, no value model",
    config=RLOOConfig, roles=("policy", "reward", "reference"), trains=("policy",),
    prior_seconds=65, memory=("critic-free",),
    compared=(Compared(
        "rloo", "RLOO (no critic)", "reward model (full fine-tuning), then RLOO: K completions "
        "per prompt, the leave-one-out baseline; three models: policy, reward, reference",
        "RLOO, no value model (3 models)", shape="rlhf",
        # PPO's samples: 60 rollouts of 64 completions (16 prompts x 4), 16 updates each
        world={"learning_rate": 2e-4, "kl_coef": 0.1, "rollout_batch_size": 16,
               "num_generations": 4, "num_iterations": 4, "num_minibatches": 4,
               "batch_size": 16, "max_steps": 60, "eval_every": 10},
        user={"eval_every": 20}),),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(RLOOConfig, argv, prog="preflab rloo", description=__doc__)
    session.run_command(lambda c: train(c, GROUP), cfg)
    return 0
