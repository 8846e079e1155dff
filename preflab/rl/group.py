"""What RLOO and GRPO share inside the one RL loop (``preflab.rl.loop``): K completions per
prompt, the group as the baseline, no critic.

    preflab rloo|grpo --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

- ``GroupConfig``: ``--num-generations`` (K), ``--num-iterations``, ``--clip-range-high``,
  ``--loss-aggregation``. Rows are prompt-major, so ``scores.view(-1, K)`` is one group per row.
- ``group_algorithm``: the loop's ``Algorithm`` from what differs between the two: the
  advantage, one per completion from its group (RLOO: leave-one-out with the KL folded into
  the reward; GRPO: group-normalised), the importance level and whether the KL is a loss term.
- ``policy_loss``: the clipped surrogate (``preflab.losses.clipped_policy_loss``:
  ``--clip-range``, ``--clip-range-high``, the method's importance level,
  ``--loss-aggregation``; GRPO adds its k3 KL term). With ``--loss-aggregation token`` the
  loss is normalised by the tokens over every process, else by the completions.
- ``figures``: TRL's metric names (``reward``, ``reward_std``, ``frac_reward_zero_std``,
  ``kl``, ``entropy``, ``clip_ratio/*``, ``completions/*``, ``rewards/<source>/mean``).

The roles are ``preflab.rl.roles`` with ``critic=False``: policy, reference and reward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from preflab.config import arg
from preflab.errors import ConfigError
from preflab.losses import LOSS_AGGREGATIONS, clipped_policy_loss, kl_per_token
from preflab.rl.common import Rollout, RolloutConfig, reduce_means
from preflab.rl.loop import Algorithm
from preflab.rl.tensors import sampler_logprob_gap, sequence_sum
from preflab.training import session

Advantages = Callable[["GroupConfig", Tensor, dict, Tensor, session.Run], Tensor]


@dataclass
class GroupConfig(RolloutConfig):
    """The flags RLOO and GRPO share (each command adds its own)."""

    num_generations: int = arg(4, "K: completions sampled per prompt, the group whose other "
                               "rewards are each one's baseline.", ge=2)
    rollout_batch_size: int = arg(16, "Prompts per rollout (per process); each gets "
                                  "--num-generations completions.", ge=1)
    num_minibatches: int = arg(1, "Minibatches per pass over a rollout's completions (one "
                               "optimizer step each).", ge=1)
    num_iterations: int = arg(1, "Passes over each rollout (mu of Shao et al. 2024; PPO's "
                              "--ppo-epochs). Above 1 the clipped ratio keeps later passes "
                              "near the policy that sampled.", ge=1)
    clip_range_high: float = arg(0.0, "Upper clip range (DAPO's clip-higher, e.g. 0.28); 0: "
                                 "--clip-range on both sides.", ge=0)
    loss_aggregation: str = arg("sequence", "How token losses become the loss: sequence (mean "
                                "over completions of each one's token mean, Shao et al. 2024), "
                                "token (mean over every token of the minibatch, DAPO), fixed "
                                "(token sum / (completions x --response-length), Dr. GRPO).",
                                choices=LOSS_AGGREGATIONS)

    def validate(self) -> None:
        super().validate()
        rows = self.rollout_batch_size * self.num_generations
        if rows % self.num_minibatches:
            raise ConfigError(f"--rollout-batch-size x --num-generations ({rows} completions) "
                              "must be a multiple of --num-minibatches", field="num_minibatches")


CLIP_KEYS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")


def group_algorithm(name: str, advantages: Advantages, *, importance: dict[str, str],
                    kl_estimator: str, kl_in_loss: bool) -> Algorithm:
    """RLOO's or GRPO's ``Algorithm`` for ``preflab.rl.loop``, from what differs between them.

    ``advantages``: ``(cfg, scores [B], old (logprobs, ref_logprobs [B, R]), mask, run) ->
    advantages [B]``; ``importance``: ``--importance-sampling-level`` value ->
    ``clipped_policy_loss``'s ``importance``; ``kl_estimator``: the per-token KL the method
    penalises (logged as ``kl``); ``kl_in_loss``: GRPO's ``kl_coef * k3`` is a loss term,
    RLOO's KL is in the reward instead."""
    return Algorithm(
        name, samples=lambda cfg: cfg.num_generations, passes=lambda cfg: cfg.num_iterations,
        by_tokens=lambda cfg: cfg.loss_aggregation == "token",
        advantages=lambda cfg, rollout, kl_coef, run: {"advantages": advantages(
            cfg, rollout.scores, rollout.old, rollout.mask, run)},
        policy_loss=partial(policy_loss, importance, kl_in_loss),
        figures=partial(figures, kl_estimator),
        final_metrics=lambda record: {k: record[k] for k in ("reward", "kl", "entropy")
                                      if k in record},
        summary=lambda cfg: {"num_generations": cfg.num_generations},
        shown=("reward", "kl", "eval/gold_reward"))


def policy_loss(importance: dict[str, str], kl_in_loss: bool, cfg: GroupConfig, logprobs: Tensor,
                old: dict, targets: dict, rows: Tensor, mask: Tensor) -> tuple[Tensor, dict]:
    """The clipped surrogate with one advantage per completion (``clipped_policy_loss``) at the
    method's importance level, GRPO's k3 term added when ``kl_in_loss``."""
    kl_coef = cfg.kl_coef if kl_in_loss and cfg.kl_coef > 0 else 0.0
    loss, stats = clipped_policy_loss(
        logprobs, old["logprobs"][rows], targets["advantages"][rows], mask,
        clip_range=cfg.clip_range, clip_range_high=cfg.clip_range_high or None,
        importance=importance[cfg.importance_sampling_level], aggregation=cfg.loss_aggregation,
        max_length=cfg.response_length,
        ref_logprobs=old["ref_logprobs"][rows] if kl_coef else None, kl_coef=kl_coef)
    return loss, {k: stats[k] for k in CLIP_KEYS}


def figures(kl_estimator: str, cfg: GroupConfig, rollout: Rollout, targets: dict, update: dict,
            kl_coef: float, run: session.Run) -> dict:
    """TRL's RLOOTrainer and GRPOTrainer names, each averaged over processes."""
    scores, old, mask = rollout.scores, rollout.old, rollout.mask
    groups = scores.view(-1, cfg.num_generations)
    kl = kl_per_token(old["logprobs"], old["ref_logprobs"], kl_estimator)
    tokens = mask.sum().clamp(min=1)
    figures = {
        "reward": scores.mean(), "reward_std": scores.std(),
        "frac_reward_zero_std": (groups.std(-1) == 0).float().mean(),
        "kl": sequence_sum(kl, mask).sum() / tokens,
        "entropy": sequence_sum(old["entropy"], mask).sum() / tokens,
        "completions/mean_length": mask.sum(-1).float().mean(),
        "completions/clipped_ratio": (~rollout.batch["ended"]).float().mean(),
        "advantages/std": targets["advantages"].std(),
        "rollout/sampler_logprob_gap": sampler_logprob_gap(rollout.batch, old["logprobs"]),
        **{f"rewards/{k}/mean": torch.tensor(v).mean() for k, v in rollout.parts.items()},
        **update,
    }
    figures = reduce_means({k: float(v) for k, v in figures.items()}, run)
    return {"loss": figures["loss/policy"], **figures}
