"""REINFORCE++ (Hu 2025): PPO's tricks without a critic, on prompt-only data.

    preflab reinforce-pp --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

The RLHF road without a value model and without a group: one completion per prompt, as PPO
samples, and advantages normalised over the whole batch instead of estimated by a critic or
taken relative to a prompt's other completions. Three roles: policy, reference, reward. The
loop is ``preflab.rl.loop`` (every RL method's); what is REINFORCE++'s own:

- The per-token reward ``r_t = -kl_coef * KL_t`` at every response token, with
  ``KL_t = log pi_old(y_t) - log pi_ref(y_t)`` (k1, from the rollout-time log-probs), plus
  the reward model's score at the last token (``preflab.rl.tensors.per_token_rewards``).
- The return ``G_t = sum_{s >= t} r_s`` (gamma 1): ``preflab.losses.gae`` with no critic
  (values 0) and lambda 1, whose advantage is exactly the return-to-go.
- Advantages: the returns normalised over the global batch, ``(G_t - mean) / sqrt(var +
  1e-8)`` with the mean and (Bessel-corrected) variance of every response token of every
  sequence of every process (``preflab.rl.common.global_whiten``).
- PPO's clipped surrogate per token (``preflab.rl.common.token_policy_loss``, through
  ``preflab.losses.ppo_policy_loss``; ``--clip-range`` 0.2), the loss a mean over the
  minibatch's tokens (over every process's); no KL term in the loss.

Metric names are PPO's (TRL's PPOTrainer): ``objective/*``, ``policy/*``, ``loss/policy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.algorithms import Compared, Method
from preflab.config import arg, parse_config
from preflab.errors import ConfigError
from preflab.losses import gae
from preflab.rl.common import RolloutConfig, global_whiten, kl_reward_figures, token_policy_loss
from preflab.rl.loop import Algorithm, Rollout, train
from preflab.rl.tensors import per_token_rewards
from preflab.training import session


@dataclass
class ReinforcePPConfig(RolloutConfig):
    """``preflab reinforce-pp``: the shared flags, the rollout flags and REINFORCE++'s."""

    kl_coef: float = arg(0.05, "kl_coef (beta of Hu 2025): weight of the per-token KL penalty "
                         "in the reward (k1, from the rollout-time log-probs).", ge=0)
    num_iterations: int = arg(1, "Passes over each rollout (PPO's --ppo-epochs). Above 1 the "
                              "clipped ratio keeps later passes near the policy that sampled.",
                              ge=1)

    def validate(self) -> None:
        super().validate()
        if self.rollout_batch_size % self.num_minibatches:
            raise ConfigError("--rollout-batch-size must be a multiple of --num-minibatches",
                              field="num_minibatches")


def returns(logprobs: Tensor, ref_logprobs: Tensor, scores: Tensor, mask: Tensor, *,
            kl_coef: float) -> tuple[Tensor, Tensor]:
    """``(G [B, R], kl [B, R])``: ``r_t = -kl_coef * (logprobs_t - ref_logprobs_t)`` at every
    valid token, ``scores[b]`` added at row ``b``'s last; ``G_t = sum_{s >= t} r_s``. Both 0
    at padding."""
    rewards, kl = per_token_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=kl_coef,
                                    kl_estimator="k1")
    # no critic (V = 0) and lambda 1: GAE's advantage is the return-to-go, gamma 1
    G, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, gae_lambda=1.0)
    return G, kl


def advantages(cfg: ReinforcePPConfig, rollout: Rollout, kl_coef: float,
               run: session.Run) -> dict:
    """The returns, normalised over every response token of the batch (every process's)."""
    old, mask = rollout.old, rollout.mask
    G, kl = returns(old["logprobs"], old["ref_logprobs"], rollout.scores, mask, kl_coef=kl_coef)
    return {"advantages": global_whiten(G, mask, run), "returns": G, "kl": kl}


def figures(cfg: ReinforcePPConfig, rollout: Rollout, targets: dict, update: dict,
            kl_coef: float, run: session.Run) -> dict:
    """PPO's names less the value model's; the update's statistics are this process's."""
    return {"loss": update["loss/policy"], **update,
            **kl_reward_figures(rollout, targets["kl"], kl_coef, run), "objective/kl_coef": kl_coef}


REINFORCE_PP = Algorithm(
    "reinforce-pp", passes=lambda cfg: cfg.num_iterations, advantages=advantages,
    policy_loss=token_policy_loss, figures=figures,
    final_metrics=lambda record: {k: v for k, v in record.items() if k.startswith("objective/")},
    shown=("objective/scores", "objective/kl", "eval/gold_reward"))


METHOD = Method(
    name="reinforce-pp", road="rlhf",
    summary="REINFORCE++ on prompts: one completion each, a per-token KL penalty in the reward, "
            "batch-normalised advantages, no value model",
    config=ReinforcePPConfig, roles=("policy", "reward", "reference"), trains=("policy",),
    # 60 iterations of the world settings below, one thread, beside a PPO run (PPO: 58 s,
    # its prior 55), on 2 cores
    prior_seconds=35, memory=("critic-free",),
    compared=(Compared(
        "reinforce-pp", "REINFORCE++ (no critic)", "reward model (full fine-tuning), then "
        "REINFORCE++: one completion per prompt, the KL in a per-token reward, the returns "
        "normalised over the batch; three models: policy, reward, reference",
        "REINFORCE++, no value model (3 models)", shape="rlhf",
        # RLOO's samples: 60 rollouts of 64 completions (64 prompts x 1), 16 updates each
        world={"learning_rate": 2e-4, "kl_coef": 0.1, "rollout_batch_size": 64,
               "num_iterations": 4, "num_minibatches": 4, "batch_size": 16, "max_steps": 60,
               "eval_every": 10},
        user={"eval_every": 20}),),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ReinforcePPConfig, argv, prog="preflab reinforce-pp", description=__doc__)
    session.run_command(lambda c: train(c, REINFORCE_PP), cfg)
    return 0
