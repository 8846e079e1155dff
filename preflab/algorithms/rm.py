"""Reward model: a Bradley-Terry scalar head on any causal LM, trained on preference pairs.

    preflab rm --model SFT_MODEL --data PAIRS --output-dir RM

The model is the causal LM's body with a new linear head ``H -> 1``
(``AutoModelForSequenceClassification``, ``num_labels=1``); the reward of a completion is
the head's output at its last token (the EOS the data layer appends). The loss is
Bradley-Terry's negative log-likelihood of the labelled preference (Christiano et al. 2017;
Ouyang et al. 2022), with an optional required margin (Touvron et al. 2023):

    loss = -log sigmoid(r(x, y_w) - r(x, y_l) - margin)

and an optional centring term ``center_rewards_coef * (r_w + r_l)^2`` that pins the
reward's free offset near zero (Eisenstein et al. 2023), so a PPO run can read raw scores.
Chosen and rejected go through the model in one batch (``collate_preference``). Logged:
``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``; on held-out pairs ``eval/loss``, ``eval/accuracy`` (share of pairs
ranked as labelled) and ``eval/margin``. ``final/`` loads with
``AutoModelForSequenceClassification``; with ``--lora-rank`` it also holds ``adapter/``,
which ``preflab ppo --memory-mode shared`` puts on the policy's base as its reward adapter.
The loop is ``preflab.training.steps``; ``RMSteps`` is what the reward model brings to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from preflab import models
from preflab.algorithms import Method
from preflab.config import TrainConfig, arg, fsdp_arg, parse_config
from preflab.data import (
    TruncationPolicy,
    collate_preference,
    load_preference_dataset,
    split_train_eval,
)
from preflab.losses import reward_model_loss
from preflab.models.heads import SequenceScorer
from preflab.runtime import distributed
from preflab.training import session, steps

STAT_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@dataclass
class RMConfig(TrainConfig):
    """``preflab rm``: the shared training flags plus the reward model's own."""

    learning_rate: float = arg(5e-5, "Peak learning rate of AdamW.", gt=0)
    margin: float = arg(
        0.0, "Required margin inside the sigmoid: -log sigmoid(r_w - r_l - margin) "
        "(Llama 2); 0 = plain Bradley-Terry.", ge=0
    )
    center_rewards_coef: float = arg(
        0.0, "Weight of the auxiliary loss coef * (r_w + r_l)^2 that centres rewards on 0 "
        "(Eisenstein et al. 2023); 0 = off.", ge=0
    )
    fsdp: bool = fsdp_arg("reward model")


def load_data(cfg: RMConfig, tokenizer):
    policy = TruncationPolicy(max_length=cfg.max_length,
                              max_prompt_length=cfg.max_prompt_length or None,
                              overlong=cfg.overlong)
    examples, report = load_preference_dataset(cfg.data, tokenizer, policy, **cfg.data_source())
    eval_data, eval_source = cfg.eval_source()
    if eval_data:
        eval_examples, _ = load_preference_dataset(eval_data, tokenizer, policy, **eval_source)
    else:
        examples, eval_examples = split_train_eval(examples, cfg.eval_fraction, cfg.seed)
    return examples, eval_examples, report


def load_reward_model(cfg: RMConfig, run: session.Run, pad_token_id: int):
    """The classifier to train: all weights, or LoRA adapters plus the (trainable) head."""
    model = models.load_sequence_classifier(
        cfg.model, **session.load_options(cfg, run, as_policy=True),
        pad_token_id=pad_token_id,
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_rank > 0:
        targets = [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
        model = models.apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                  dropout=cfg.lora_dropout, target_modules=targets or None,
                                  task_type="SEQ_CLS")  # PEFT keeps the `score` head trainable
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    session.prepare_trained(cfg, run, model)
    return model


def pair_step(scorer, batch: dict, cfg: RMConfig, device: torch.device):
    """Per-pair losses ``[B]`` and the sums of STAT_KEYS over the pairs, for one batch."""
    scores = scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    n = int(batch["batch_size"])
    chosen, rejected = scores[:n], scores[n:]
    losses, margins = reward_model_loss(chosen, rejected, margin=cfg.margin or None)
    if cfg.center_rewards_coef:
        losses = losses + cfg.center_rewards_coef * (chosen + rejected) ** 2
    stats = torch.stack([losses.detach(), chosen.detach(), rejected.detach(), margins,
                         (margins > 0).float()]).double().sum(dim=1).cpu()
    return losses, stats


@torch.no_grad()
def held_out_figures(scorer, examples, cfg: RMConfig, pad_id: int,
                     run: session.Run) -> dict[str, float]:
    """Loss, pairwise accuracy and mean margin over the held-out pairs (all ranks combined)."""
    if not examples:
        return {}
    scorer.eval()
    totals = torch.zeros(len(STAT_KEYS) + 1, dtype=torch.float64)
    for idx, counted in steps.held_out_batches(len(examples), cfg, run):
        chunk = [examples[i] for i in idx]
        _, stats = pair_step(scorer, collate_preference(chunk, pad_id), cfg, run.device)
        if counted:
            totals += torch.cat([stats, torch.tensor([float(len(chunk))], dtype=torch.float64)])
    totals = distributed.all_reduce_sum(totals, run.ctx)
    scorer.train()
    mean = {k: (totals[i] / totals[-1].clamp(min=1)).item() for i, k in enumerate(STAT_KEYS)}
    return {"eval/loss": mean["loss"], "eval/accuracy": mean["rewards/accuracies"],
            "eval/margin": mean["rewards/margins"], "eval/chosen": mean["rewards/chosen"],
            "eval/rejected": mean["rewards/rejected"]}


class RMSteps:
    """The reward model's side of the step loop (``preflab.training.steps``): the pairs, the
    classifier and its scorer, and one micro-batch's Bradley-Terry losses."""

    role, reference, extra = "reward", None, None
    desc, postfix = "rm", ("loss", "rewards/accuracies", "eval/accuracy")
    headline = ("eval/accuracy", "eval/margin")

    def __init__(self, cfg: RMConfig, run: session.Run, tokenizer) -> None:
        self.cfg, self.run, self.pad_id = cfg, run, tokenizer.pad_token_id
        self.examples, self.eval_examples, self.data_report = load_data(cfg, tokenizer)
        if run.ctx.is_main:
            print(f"data: {len(self.examples)} train / {len(self.eval_examples)} eval pairs; "
                  f"{self.data_report.summary()}", flush=True)
        self.model = load_reward_model(cfg, run, self.pad_id)
        self.forward = SequenceScorer(self.model)
        session.shard_if_asked(cfg, run, self.forward)  # the scorer's forward runs the model
        self.forward.train()
        self.global_pairs = cfg.batch_size * cfg.grad_accum * run.ctx.world_size

    def collate(self, drawn: list[list[int]]) -> tuple[list[dict], int]:
        return ([collate_preference([self.examples[i] for i in idx], self.pad_id)
                 for idx in drawn], self.global_pairs)

    def micro_step(self, scorer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss, and the sums of STAT_KEYS with the pair count."""
        losses, stats = pair_step(scorer, batch, self.cfg, self.run.device)
        pairs = torch.tensor([float(batch["batch_size"])], dtype=torch.float64)
        return losses.sum(), torch.cat([stats, pairs])

    def means(self, totals: torch.Tensor) -> dict[str, float]:
        return {k: (totals[i] / totals[-1].clamp(min=1)).item() for i, k in enumerate(STAT_KEYS)}

    def evaluate(self) -> dict[str, float]:
        return held_out_figures(self.forward, self.eval_examples, self.cfg, self.pad_id, self.run)

    def measure_roles(self, optimizer) -> dict[str, dict[str, int]]:
        return steps.measure_roles(self.model, optimizer, role="reward")


@session.trainer
def train(cfg: RMConfig) -> dict:
    return steps.train(cfg, RMSteps, command="rm", data="preference")


METHOD = Method(
    name="rm", road="reward",
    summary="reward model: a Bradley-Terry scalar head on preference pairs",
    config=RMConfig, roles=("reward",), trains=("reward",), prior_seconds=40,
    memory=("rm",),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(RMConfig, argv, prog="preflab rm", description=__doc__)
    session.run_command(train, cfg)
    return 0
