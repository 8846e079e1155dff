"""Supervised fine-tuning: maximise the log-likelihood of completions given prompts.

    preflab sft --model MODEL --data DATA --output-dir RUN

The loss is the mean negative log-likelihood over completion tokens (prompt and padding
masked; ``--no-completion-only`` trains on the prompt too). Over gradient accumulation the
token-level sums are divided by the number of completion tokens in the *whole* optimizer
batch, counted before the first backward, so 8 micro-batches of 1 give the same update as
1 micro-batch of 8 (a mean per micro-batch would weight short examples more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from preflab import models
from preflab.algorithms import Method
from preflab.config import TrainConfig, arg, fsdp_arg, parse_config
from preflab.data import (
    TruncationPolicy,
    check_dataset,
    collate_sft,
    load_sft_dataset,
    split_train_eval,
)
from preflab.models.logprobs import (
    forward_logps,
    packed_forward_logps,
)
from preflab.runtime import distributed, memory
from preflab.runtime.metrics import format_metrics
from preflab.runtime.stream import ExampleStream
from preflab.training import session


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
def evaluate(model, examples, cfg: SFTConfig, pad_id: int, run: session.Run) -> dict[str, float]:
    """Mean NLL per completion token over the held-out examples (all ranks combined)."""
    if not examples:
        return {}
    model.eval()
    size = cfg.eval_batch_size or cfg.batch_size
    mine = examples[run.ctx.rank :: run.ctx.world_size]
    starts = distributed.even_starts(len(mine), size, run.ctx, even=cfg.fsdp)
    totals = torch.zeros(2, dtype=torch.float64)
    for start in starts:
        rows = mine[start : start + size] if start is not None else (mine or examples)[:1]
        loss_sum, count = forward_nll(model, collate_sft(rows, pad_id), run.device,
                                      cfg.padding_free)
        if start is not None:
            totals += torch.tensor([loss_sum.item(), float(count)], dtype=torch.float64)
    totals = distributed.all_reduce_sum(totals, run.ctx)
    model.train()
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}


@session.trainer
def train(cfg: SFTConfig) -> dict:
    check_dataset(cfg.data, "sft", **cfg.data_source(), split_flag="--data-split")
    eval_data, eval_source = cfg.eval_source()
    check_dataset(eval_data, "sft", **eval_source, split_flag="--eval-data-split")
    run = session.start_run(cfg, "sft")
    session.check_fsdp(cfg, run)
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples, eval_examples, data_report = load_data(cfg, tokenizer)
    if run.ctx.is_main:
        print(f"data: {len(examples)} train / {len(eval_examples)} eval examples; "
              f"{data_report.summary()}", flush=True)
    model = session.load_trainable(cfg, run)
    if cfg.padding_free:
        session.require_packing(model, tokenizer)
    session.shard_if_asked(cfg, run, model)
    model.train()
    steps = session.total_steps(cfg, len(examples), run.ctx)
    optimizer, scheduler = session.build_optimization(cfg, model, steps)
    stream = ExampleStream(examples, seed=cfg.seed, rank=run.ctx.rank, world_size=run.ctx.world_size)
    start_step = session.maybe_resume(
        cfg, run, models={"policy": model}, optimizer=optimizer, scheduler=scheduler, stream=stream
    )
    ddp_model = distributed.wrap_ddp(model, run.ctx, run.device)
    logger = session.open_logger(run, start_step)
    pad_id = tokenizer.pad_token_id
    throughput = session.Throughput()
    if start_step == 0:
        logger.log(0, evaluate(model, eval_examples, cfg, pad_id, run))

    bar = session.progress_bar(run, total=steps, initial=start_step, desc="sft")
    state = dict(models={"policy": model}, optimizer=optimizer, scheduler=scheduler, stream=stream)
    step = start_step
    roles = None
    # Summed NLL and token count since the last log, kept on the device so a micro-batch
    # never waits for the host (float32: MPS has no float64).
    running_loss = torch.zeros(2, device=run.device)
    for step in range(start_step + 1, steps + 1):
        micro_batches = [collate_sft(stream.next_batch(cfg.batch_size), pad_id) for _ in range(cfg.grad_accum)]
        # Normalise by the completion tokens of the whole optimizer batch on every rank.
        local_tokens = sum(int(b["completion_mask"][:, 1:].sum()) for b in micro_batches)
        global_tokens = distributed.all_reduce_sum(torch.tensor(float(local_tokens)), run.ctx).item()
        step_loss = torch.zeros((), device=run.device)
        for i, batch in enumerate(micro_batches):
            # DDP averages gradients over ranks; multiply back so the result is sum / tokens.
            sync = i == len(micro_batches) - 1 or not run.ctx.enabled
            with distributed.gradient_sync(ddp_model, sync):
                loss_sum, _ = forward_nll(ddp_model, batch, run.device, cfg.padding_free)
                session.backward(run, loss_sum * run.ctx.world_size / max(global_tokens, 1.0))
            running_loss[0] += loss_sum.detach().float()
            step_loss += loss_sum.detach().float()
            throughput.add(int(batch["attention_mask"].sum()))
        running_loss[1] += local_tokens
        grad_norm = session.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm,
                                           run=run, step=step, loss=step_loss)
        if roles is None:  # measured while gradients and optimizer state both exist
            roles = {"policy": memory.role_tensor_bytes(model, optimizer)}
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)

        if step % cfg.log_every == 0 or step == steps:
            totals = distributed.all_reduce_sum(running_loss, run.ctx).cpu()
            record = {"loss": (totals[0] / totals[1].clamp(min=1)).item(),
                      **session.run_metrics(run, scheduler, throughput, stream, grad_norm)}
            running_loss.zero_()
            if cfg.eval_every and step % cfg.eval_every == 0 and step != steps:
                record.update(evaluate(model, eval_examples, cfg, pad_id, run))
            logger.log(step, record)
            bar.set_postfix_str(format_metrics(record, ("loss", "eval/loss", "tokens_per_sec")))
        session.step_boundary(run, step, steps, **state)
    bar.close()

    final_eval = evaluate(model, eval_examples, cfg, pad_id, run)
    roles = roles or {"policy": memory.role_tensor_bytes(model, optimizer)}
    summary = session.finish_run(
        run, logger=logger, final_log=final_eval, headline=("eval/loss",),
        model=model, tokenizer=tokenizer, steps=step, tokens=throughput.tokens * run.ctx.world_size,
        roles=roles, final_metrics=final_eval, data_report=data_report.as_dict(),
    )
    distributed.teardown(run.ctx)
    return summary


METHOD = Method(
    name="sft", road="sft", summary="supervised fine-tuning on completions",
    config=SFTConfig, roles=("policy",), trains=("policy",), prior_seconds=130,
    memory=("sft",),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SFTConfig, argv, prog="preflab sft", description=__doc__)
    session.run_command(train, cfg)
    return 0
