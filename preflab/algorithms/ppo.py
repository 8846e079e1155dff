"""PPO for language models: the RLHF road's last step, on prompt-only data.

    preflab ppo --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

One step is one PPO iteration (Ziegler et al. 2019; Huang et al. 2024, "The N+
implementation details of RLHF with PPO"), every detail below traceable to a line. The loop
is the one every RL method runs (``preflab.rl.loop``); this file holds PPO's own: its flags,
the per-token reward and GAE (``advantages``), the clipped value loss, the figures and the KL
controller (``PPO``); the clipped policy loss is ``preflab.rl.common.token_policy_loss``.

1. Rollout: ``--rollout-batch-size`` prompts; one response each, sampled by the policy in
   eval mode with the KV cache (``preflab.rl.common.collect_rollout``, through
   ``preflab.rl.tensors.sample_rollout`` and ``preflab.generation.generate``): the full
   softmax at ``--temperature`` (``--top-p`` below 1 is refused), at most
   ``--response-length`` tokens. Responses end at their first EOS.
2. Scores: the reward sources (``--reward``: reward models, functions, a weighted sum) score
   the decoded text; a response without EOS gets ``--missing-eos-penalty`` instead.
3. One no-grad pass each: the policy's log-probs of its own tokens (under logits / temperature),
   the reference's, the value model's per-token values. In a single pass (``--ppo-epochs 1``,
   ``--num-minibatches 1`` and the rollout within ``--batch-size``), the update's own policy
   and value passes, at the same weights, give those numbers: only the reference runs here.
4. Per-token reward: ``-kl_coef`` x the per-token KL (``--kl-estimator``; the default k1 is
   ``log pi - log pi_ref``) at every token, plus the score at the last token
   (``preflab.rl.tensors.per_token_rewards``); optionally whitened (``--whiten-rewards``).
5. GAE (``--gamma``, ``--gae-lambda``); advantages whitened over the batch's tokens (every
   process's: under torchrun the mean and variance are all-reduced).
6. ``--ppo-epochs`` passes over ``--num-minibatches`` shuffled minibatches: clipped policy loss
   (``--clip-range``) + ``--vf-coef`` x clipped value loss (``--clip-range-value``), gradient
   clipping, one AdamW step per minibatch; dropout is off in every model.
7. The KL coefficient is fixed, or adapted toward ``--target-kl`` (``--adaptive-kl``).

Roles and memory (``--memory-mode``): ``classic`` holds four models, ``shared`` one frozen base
with policy, value and reward adapters ("Hydra"); ``preflab.rl.roles``. The value model starts
from the reward model where one is given (``--value-model`` overrides). Checkpoints are taken
at iteration boundaries (``--save-every``); ``--resume`` redoes an interrupted iteration
exactly (sampling and minibatch order are seeded by the iteration). An evaluation-only
``--gold-reward`` is logged as ``eval/gold_reward`` beside ``eval/proxy_reward``, so reward
hacking shows in the metrics. Continue from a finished run with a new reward model:
``--model RUN/final --ref-model SFT --reward NEW_RM``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.algorithms import Compared, Method
from preflab.config import arg, parse_config
from preflab.errors import ConfigError
from preflab.losses import KL_ESTIMATORS, gae, ppo_value_loss
from preflab.rl import loop
from preflab.rl.common import (
    Rollout,
    RolloutConfig,
    global_whiten,
    kl_reward_figures,
    token_policy_loss,
)
from preflab.rl.kl_control import kl_controller
from preflab.rl.loop import Algorithm
from preflab.rl.roles import MEMORY_MODES
from preflab.rl.tensors import explained_variance, per_token_rewards
from preflab.training import session


@dataclass
class PPOConfig(RolloutConfig):
    """``preflab ppo``: the shared flags (``--batch-size`` = micro-batch of every forward), the
    rollout flags (``preflab.rl.common.RolloutConfig``) and PPO's."""

    learning_rate: float = arg(1e-5, "Peak learning rate of AdamW (policy and value).", gt=0)
    memory_mode: str = arg("classic", "classic: four models; shared: one frozen base with "
                           "policy, value and reward adapters.", choices=MEMORY_MODES)
    value_model: str = arg("", "Where the value model starts (default: the first reward model, "
                           "else --model).", path="model")
    kl_coef: float = arg(0.05, "kl_coef: weight of the per-token KL penalty (initial value "
                         "with --adaptive-kl).", ge=0)
    adaptive_kl: bool = arg(False, "Adapt kl_coef toward --target-kl (Ziegler et al. 2019).")
    target_kl: float = arg(6.0, "Target KL per response (nats) for --adaptive-kl.", gt=0)
    kl_horizon: int = arg(10000, "Horizon of the adaptive KL controller, in responses.", ge=1)
    kl_estimator: str = arg("k1", "Per-token KL estimator in the reward.", choices=KL_ESTIMATORS)
    gamma: float = arg(1.0, "Discount gamma of GAE.", ge=0, le=1)
    gae_lambda: float = arg(0.95, "lambda of GAE.", ge=0, le=1)
    clip_range_value: float = arg(0.2, "Value clip range around the rollout-time values.", gt=0)
    vf_coef: float = arg(0.1, "Weight of the value loss.", ge=0)
    ppo_epochs: int = arg(4, "Passes over each rollout batch.", ge=1)
    whiten_rewards: bool = arg(False, "Whiten the per-token rewards (scale only) before GAE.")

    def validate(self) -> None:
        super().validate()
        if self.rollout_batch_size % self.num_minibatches:
            raise ConfigError("--rollout-batch-size must be a multiple of --num-minibatches",
                              field="num_minibatches")


def advantages(cfg: PPOConfig, rollout: Rollout, kl_coef: float, run: session.Run) -> dict:
    """The per-token reward (the KL at every token, the score at the last), GAE with the value
    model's rollout-time values, the advantages whitened over every process's tokens."""
    old, mask = rollout.old, rollout.mask
    rewards, kl = per_token_rewards(old["logprobs"], old["ref_logprobs"], rollout.scores, mask,
                                    kl_coef=kl_coef, kl_estimator=cfg.kl_estimator)
    if cfg.whiten_rewards:
        rewards = global_whiten(rewards, mask, run, shift_mean=False)
    advantages, returns = gae(rewards, old["values"], mask, gamma=cfg.gamma,
                              gae_lambda=cfg.gae_lambda)
    return {"advantages": global_whiten(advantages, mask, run), "returns": returns, "kl": kl}


def value_loss(cfg: PPOConfig, values: Tensor, old: dict, targets: dict, rows: Tensor,
               mask: Tensor) -> tuple[Tensor, dict]:
    loss, vf = ppo_value_loss(values, old["values"][rows], targets["returns"][rows], mask,
                              clip_range_value=cfg.clip_range_value)
    return cfg.vf_coef * loss, {"loss/value": loss, "val/clipfrac": vf["clipfrac"]}


UPDATE_KEYS = ("loss/policy", "loss/value", "policy/approxkl", "policy/clipfrac", "val/clipfrac",
               "val/ratio")


def figures(cfg: PPOConfig, rollout: Rollout, targets: dict, update: dict, kl_coef: float,
            run: session.Run) -> dict:
    """TRL's PPOTrainer names; the update's statistics are this process's."""
    variance = explained_variance(rollout.old["values"], targets["returns"], rollout.mask)
    shared = kl_reward_figures(rollout, targets["kl"], kl_coef, run,
                               **{"val/explained_variance": torch.tensor(variance)})
    return {"loss": update["loss/policy"] + cfg.vf_coef * update["loss/value"],
            **{k: update[k] for k in UPDATE_KEYS}, **shared, "objective/kl_coef": kl_coef}


PPO = Algorithm(
    "ppo", passes=lambda cfg: cfg.ppo_epochs, advantages=advantages, policy_loss=token_policy_loss,
    value_loss=value_loss, figures=figures,
    kl_control=lambda cfg: kl_controller(cfg.kl_coef, adaptive=cfg.adaptive_kl,
                                         target=cfg.target_kl, horizon=cfg.kl_horizon),
    final_metrics=lambda record: {k: v for k, v in record.items() if k.startswith("objective/")},
    shown=("objective/scores", "objective/kl", "eval/gold_reward"))


def train(cfg: PPOConfig) -> dict:
    return loop.train(cfg, PPO)


_WORLD = {"learning_rate": 3e-4, "kl_coef": 0.05, "rollout_batch_size": 64,
          "num_minibatches": 4, "batch_size": 16, "max_steps": 60, "eval_every": 10}
METHOD = Method(
    name="ppo", road="rlhf",
    summary="PPO on prompts: policy, value, reward and reference roles",
    config=PPOConfig, roles=("policy", "value", "reward", "reference"),
    trains=("policy", "value"), prior_seconds=55,
    memory=("ppo-classic", "ppo-shared"),
    compared=(
        Compared("ppo", "RLHF (PPO)", "reward model (full fine-tuning), then PPO with four "
                 "models: policy, value, reward, reference", "RLHF, classic (4 models)",
                 shape="rlhf", flags={"memory_mode": "classic"}, world=_WORLD,
                 user={"eval_every": 20},
                 real_cpu={"learning_rate": 1e-5, "kl_coef": 0.05, "rollout_batch_size": 16,
                           "num_minibatches": 2, "batch_size": 8, "ppo_epochs": 1,
                           "max_steps": 12, "eval_every": 0}),
        Compared("ppo-shared", "RLHF (PPO, shared)", "reward model as a LoRA adapter, then PPO "
                 "with policy, value and reward as adapters on one frozen base",
                 "RLHF, shared base (adapters)", shape="rlhf", flags={"memory_mode": "shared"},
                 world={**_WORLD, "learning_rate": 2e-4, "lora_rank": 32},
                 user={"lora_rank": 16, "eval_every": 20}, reward_section="rm-lora",
                 plan="ppo-shared"),
    ),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PPOConfig, argv, prog="preflab ppo", description=__doc__)
    session.run_command(train, cfg)
    return 0
