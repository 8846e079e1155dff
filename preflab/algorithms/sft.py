"""Supervised fine-tuning: maximise the log-likelihood of completions given prompts.

    preflab sft --model MODEL --data DATA --output-dir RUN

The loss is the mean negative log-likelihood over completion tokens (prompt and padding
masked; ``--no-completion-only`` trains on the prompt too). Over gradient accumulation the
token-level sums are divided by the number of completion tokens in the *whole* optimizer
batch, counted before the first backward, so 8 micro-batches of 1 give the same update as
1 micro-batch of 8 (a mean per micro-batch would weight short examples more).

The loop is ``preflab.training.steps``; ``SFTSteps`` is what SFT brings to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from preflab.algorithms import Method
from preflab.config import TrainConfig, arg, fsdp_arg, parse_config
from preflab.data import (
    TruncationPolicy,
    collate_sft,
    load_sft_dataset,
    split_train_eval,
)
from preflab.models.logprobs import (
    forward_logps,
    packed_forward_logps,
)
from preflab.runtime import distributed
from preflab.training import session, steps


@dataclass
class SFTConfig(TrainConfig):
    """``preflab sft``: the shared training flags plus what is specific to SFT."""

    learning_rate: float = arg(2e-4, "Peak learning rate of AdamW.", gt=0)
    completion_only: bool = arg(
        True, "Count the loss on completion tokens only (--no-completion-only: whole sequence)."
    )
    padding_free: bool = arg(
        False, "Pack each micro-batch's sequences into as few rows as fit (no row longer than "
        "the longest sequence), positions restarting per sequence: little compute on padding. "
        "Needs an attention that honours restarting position "
        "ids (transformers' sdpa, eager or flash attention); checked at the start."
    )
    fsdp: bool = fsdp_arg("model")


def truncation_policy(cfg: TrainConfig) -> TruncationPolicy:
    return TruncationPolicy(
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length or None,
        overlong=cfg.overlong,
    )


def load_data(cfg: SFTConfig, tokenizer):
    policy = truncation_policy(cfg)
    examples, report = load_sft_dataset(
        cfg.data, tokenizer, policy, completion_only=cfg.completion_only, **cfg.data_source()
    )
    eval_data, eval_source = cfg.eval_source()
    if eval_data:
        eval_examples, _ = load_sft_dataset(
            eval_data, tokenizer, policy, completion_only=cfg.completion_only, **eval_source
        )
    else:
        examples, eval_examples = split_train_eval(examples, cfg.eval_fraction, cfg.seed)
    return examples, eval_examples, report


def forward_nll(model, batch: dict, device: torch.device,
                padding_free: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL over completion tokens of one micro-batch, and their count; with
    ``padding_free`` the rows packed into one (``logprobs.pack``)."""
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    if padding_free:
        seq = packed_forward_logps(model, input_ids, attention_mask,
                                   batch["completion_mask"].to(device))
        return -seq.sum.sum(), seq.count.sum()
    seq, _ = forward_logps(model, input_ids, attention_mask, batch["completion_mask"].to(device),
                           keep_logits=False)
    return -seq.sum.sum(), seq.count.sum()


@torch.no_grad()
def held_out_figures(model, examples, cfg: SFTConfig, pad_id: int,
                     run: session.Run) -> dict[str, float]:
    """Mean NLL per completion token over the held-out examples (all ranks combined)."""
    if not examples:
        return {}
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    for idx, counted in steps.held_out_batches(len(examples), cfg, run):
        loss_sum, count = forward_nll(model, collate_sft([examples[i] for i in idx], pad_id),
                                      run.device, cfg.padding_free)
        if counted:
            totals += torch.tensor([loss_sum.item(), float(count)], dtype=torch.float64)
    totals = distributed.all_reduce_sum(totals, run.ctx)
    model.train()
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}


class SFTSteps:
    """SFT's side of the step loop (``preflab.training.steps``): the completions, the model,
    and one micro-batch's summed NLL over its completion tokens."""

    role, reference, extra = "policy", None, None
    desc, postfix, headline = "sft", ("loss", "eval/loss", "tokens_per_sec"), ("eval/loss",)

    def __init__(self, cfg: SFTConfig, run: session.Run, tokenizer) -> None:
        self.cfg, self.run, self.pad_id = cfg, run, tokenizer.pad_token_id
        self.examples, self.eval_examples, self.data_report = load_data(cfg, tokenizer)
        if run.ctx.is_main:
            print(f"data: {len(self.examples)} train / {len(self.eval_examples)} eval examples; "
                  f"{self.data_report.summary()}", flush=True)
        self.model = self.forward = session.load_trainable(cfg, run)
        if cfg.padding_free:
            session.require_packing(self.model, tokenizer)
        session.shard_if_asked(cfg, run, self.model)
        self.model.train()

    def collate(self, drawn: list[list[int]]) -> tuple[list[dict], float]:
        batches = [collate_sft([self.examples[i] for i in idx], self.pad_id) for idx in drawn]
        # Normalise by the completion tokens of the whole optimizer batch on every rank.
        local_tokens = sum(int(b["completion_mask"][:, 1:].sum()) for b in batches)
        global_tokens = distributed.all_reduce_sum(torch.tensor(float(local_tokens)),
                                                   self.run.ctx).item()
        return batches, max(global_tokens, 1.0)

    def micro_step(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed NLL, and (NLL, tokens) kept on the device so a micro-batch never waits
        for the host (float32: MPS has no float64)."""
        loss_sum, _ = forward_nll(model, batch, self.run.device, self.cfg.padding_free)
        tokens = batch["completion_mask"][:, 1:].sum().to(loss_sum.device, torch.float32)
        return loss_sum, torch.stack([loss_sum.detach().float(), tokens])

    def means(self, totals: torch.Tensor) -> dict[str, float]:
        totals = totals.cpu()
        return {"loss": (totals[0] / totals[1].clamp(min=1)).item()}

    def evaluate(self) -> dict[str, float]:
        return held_out_figures(self.model, self.eval_examples, self.cfg, self.pad_id, self.run)

    def measure_roles(self, optimizer) -> dict[str, dict[str, int]]:
        return steps.measure_roles(self.model, optimizer)


@session.trainer
def train(cfg: SFTConfig) -> dict:
    return steps.train(cfg, SFTSteps, command="sft", data="sft")


METHOD = Method(
    name="sft", road="sft", summary="supervised fine-tuning on completions",
    config=SFTConfig, roles=("policy",), trains=("policy",), prior_seconds=130,
    memory=("sft",),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SFTConfig, argv, prog="preflab sft", description=__doc__)
    session.run_command(train, cfg)
    return 0
