"""The step-based trainers' one loop: sft, rm, dpo, kto, and online-dpo's DPO steps.

``train(cfg, setup, command=..., data=...)`` is the whole run, top to bottom: check the data,
start the run, load the tokenizer, ``setup`` (the algorithm's: its data, its model and
reference), then ``begin`` (optimizer and schedule, resume, logger, the evaluation at step 0),
``take_steps`` (the loop) and ``finish`` (final evaluation, ``final/``, ``summary.json``).
online-dpo calls ``begin``, ``take_steps`` (once per round) and ``finish`` itself.

What ``setup(cfg, run, tokenizer)`` returns, the *job*, is a plain object (no base class)
holding only what differs between the algorithms:

    model        the trained model: the optimizer's, the checkpoint's and final/'s
    role         its name in checkpoints and memory figures ("policy"; rm: "reward")
    forward      what a micro-batch runs through (the model; rm: a scorer on it); DDP wraps it
    reference    the run's ``reference.Reference``, or None; with one, the final metrics name
                 each role's tensor bytes
    examples     the training examples; the stream draws their indices
    data_report  the data's report (summary.json's ``data``)
    desc, postfix, headline, extra
                 the progress bar's label and figures, the closing line's figures, and the
                 fields summary.json adds
    collate(drawn) -> (micro_batches, denominator)
                 the step's micro-batches (dicts with ``attention_mask``) from the index lists
                 drawn, one per micro-batch, and what the summed loss is divided by (the global
                 batch's examples; sft: its completion tokens, counted before any backward)
    micro_step(model, batch) -> (loss_sum, stats)
                 one micro-batch's forward: its summed loss, and a vector of sums to log
    means(totals) -> dict   the logged figures from the stats summed over steps and processes
    evaluate() -> dict      the held-out figures (on every process: may be collective)
    measure_roles(optimizer) -> dict   tensor bytes per role
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from preflab import models
from preflab.data import check_dataset
from preflab.evaluation import SampledEvalConfig
from preflab.runtime import distributed, memory
from preflab.runtime.metrics import MetricLogger, format_metrics
from preflab.runtime.stream import ExampleStream
from preflab.training import session


def train(cfg, setup, *, command: str, data: str) -> dict:
    """Run a step-based trainer: ``command`` names the run, ``data`` is what ``--data`` and
    ``--eval-data`` hold (``check_dataset``'s purpose), ``setup`` makes the job."""
    check_dataset(cfg.data, data, **cfg.data_source(), split_flag="--data-split")
    eval_data, eval_source = cfg.eval_source()
    check_dataset(eval_data, data, **eval_source, split_flag="--eval-data-split")
    if isinstance(cfg, SampledEvalConfig):
        check_dataset(cfg.eval_prompts, "prompt")
    run = session.start_run(cfg, command)
    session.check_fsdp(cfg, run)
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    job = setup(cfg, run, tokenizer)
    steps = session.total_steps(cfg, len(job.examples), run.ctx)
    stream = ExampleStream(list(range(len(job.examples))), seed=cfg.seed, rank=run.ctx.rank,
                           world_size=run.ctx.world_size)
    loop, start_step = begin(cfg, run, job, steps, stream)
    step = take_steps(loop, stream, start_step, steps)
    return finish(loop, step, tokenizer)


@dataclass
class Loop:
    """What the steps of a run share, from ``begin`` to ``finish``."""

    cfg: Any
    run: session.Run
    job: Any
    model: torch.nn.Module
    """The job's ``forward``, wrapped for DDP."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    logger: MetricLogger
    bar: Any
    steps: int
    """The run's last step."""
    checkpointed: dict
    """``step_boundary``'s models, optimizer, scheduler and stream."""
    throughput: session.Throughput = field(default_factory=session.Throughput)
    running: torch.Tensor | None = None
    """The micro-batches' stats summed since the last log."""
    roles: dict | None = None
    """Tensor bytes per role, measured at the first step."""


def begin(cfg, run: session.Run, job, steps: int, stream) -> tuple[Loop, int]:
    """Optimizer and schedule, the resume (``stream`` is what the checkpoint holds beside the
    weights), the logger and the evaluation at step 0; returns the loop and its first step."""
    optimizer, scheduler = session.build_optimization(cfg, job.model, steps)
    checkpointed = dict(models={job.role: job.model}, optimizer=optimizer, scheduler=scheduler,
                        stream=stream)
    start_step = session.maybe_resume(cfg, run, **checkpointed)
    model = distributed.wrap_ddp(job.forward, run.ctx, run.device)
    logger = session.open_logger(run, start_step)
    if start_step == 0:
        logger.log(0, job.evaluate())
    bar = session.progress_bar(run, total=steps, initial=start_step, desc=job.desc)
    return Loop(cfg, run, job, model, optimizer, scheduler, logger, bar, steps,
                checkpointed), start_step


def take_steps(loop: Loop, stream: ExampleStream, first: int, last: int, *,
               figures: dict | None = None, log_at: int | None = None) -> int:
    """Optimizer steps ``first + 1`` to ``last``, their micro-batches drawn from ``stream``;
    returns the last step. ``figures`` join every logged record, and step ``log_at`` is logged
    whatever ``--log-every`` says (online-dpo: a round's figures, at its first step)."""
    cfg, run, job = loop.cfg, loop.run, loop.job
    step = first
    for step in range(first + 1, last + 1):
        drawn = [stream.next_batch(cfg.batch_size) for _ in range(cfg.grad_accum)]
        micro_batches, denominator = job.collate(drawn)
        step_loss = torch.zeros((), device=run.device)
        for i, batch in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1 or not run.ctx.enabled
            with distributed.gradient_sync(loop.model, sync):
                loss_sum, stats = job.micro_step(loop.model, batch)
                # DDP averages over ranks; scale so the update is the mean over the global batch.
                session.backward(run, loss_sum * run.ctx.world_size / denominator)
            step_loss += loss_sum.detach()
            loop.running = stats if loop.running is None else loop.running + stats
            loop.throughput.add(int(batch["attention_mask"].sum()))
        grad_norm = session.optimizer_step(job.model, loop.optimizer, loop.scheduler,
                                           cfg.max_grad_norm, run=run, step=step, loss=step_loss)
        if loop.roles is None:  # measured while gradients and optimizer state both exist
            loop.roles = job.measure_roles(loop.optimizer)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.bar.update(1)

        if step % cfg.log_every == 0 or step == loop.steps or step == log_at:
            record = job.means(distributed.all_reduce_sum(loop.running, run.ctx))
            record.update(session.run_metrics(run, loop.scheduler, loop.throughput, stream,
                                              grad_norm))
            record.update(figures or {})
            loop.running = None
            if cfg.eval_every and step % cfg.eval_every == 0 and step != loop.steps:
                record.update(job.evaluate())
            loop.logger.log(step, record)
            loop.bar.set_postfix_str(format_metrics(record, job.postfix))
        session.step_boundary(run, step, loop.steps, **loop.checkpointed)
    return step


def finish(loop: Loop, step: int, tokenizer) -> dict:
    """The final evaluation, ``final/``, ``summary.json`` and the closing line; returns the
    summary."""
    run, job = loop.run, loop.job
    loop.bar.close()
    final_eval = job.evaluate()
    roles = loop.roles or job.measure_roles(loop.optimizer)
    final_metrics = dict(final_eval)
    if job.reference is not None:  # what holding the reference costs, beside the figures
        final_metrics.update({f"memory/tensor_bytes/{role}": figures["total"]
                              for role, figures in roles.items()})
    summary = session.finish_run(
        run, logger=loop.logger, final_log=final_eval, headline=job.headline,
        model=job.model, tokenizer=tokenizer, steps=step,
        tokens=loop.throughput.tokens * run.ctx.world_size, roles=roles,
        final_metrics=final_metrics, data_report=job.data_report.as_dict(), extra=job.extra,
    )
    distributed.teardown(run.ctx)
    return summary


def held_out_batches(n: int, cfg, run: session.Run):
    """This process's share of ``n`` held-out examples in evaluation batches of
    ``--eval-batch-size`` (else ``--batch-size``): ``(indices, counted)`` pairs. Under
    ``--fsdp`` every process runs as many batches as the one with the most, since a sharded
    model's forwards are collective; the spare batches hold one example and are not counted."""
    size = cfg.eval_batch_size or cfg.batch_size
    mine = list(range(run.ctx.rank, n, run.ctx.world_size))
    for start in distributed.even_starts(len(mine), size, run.ctx, even=cfg.fsdp):
        if start is None:
            yield (mine or [0])[:1], False
        else:
            yield mine[start : start + size], True


def measure_roles(model: torch.nn.Module, optimizer, role: str = "policy", reference=None,
                  seen: set[int] | None = None) -> dict[str, dict[str, int]]:
    """Tensor bytes of the trained ``role`` (weights, gradients, optimizer state) and of the
    ``reference`` when there is one; ``seen`` as ``memory.role_tensor_bytes`` takes it."""
    seen = set() if seen is None else seen  # the LoRA base counts once, under the trained role
    roles = {role: memory.role_tensor_bytes(model, optimizer, seen=seen)}
    if reference is not None:
        roles["reference"] = reference.tensor_bytes(seen)
    return roles
