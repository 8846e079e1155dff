"""The start and end of every training run, shared so each algorithm file holds only its loop.

``start_run`` resolves the process group, device, dtype, run directory and seed;
``load_trainable`` loads the policy (full or LoRA); ``build_optimization`` the optimizer and
schedule; ``maybe_resume`` restores a checkpoint; ``finish_run`` writes ``final/``,
``summary.json`` and the model card. The loop in between belongs to the algorithm.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from preflab import models
from preflab.config import TrainConfig
from preflab.runtime import checkpoint, distributed, memory, rng, rundir
from preflab.runtime.metrics import MetricLogger, format_metrics
from preflab.runtime.optim import build_optimizer, build_scheduler, warmup_steps_for


@dataclass
class Run:
    """Where and how this process runs."""

    config: Any
    command: str
    ctx: distributed.DistContext
    device: torch.device
    dtype: torch.dtype
    dir: Path
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def start_run(cfg: TrainConfig, command: str) -> Run:
    ctx = distributed.setup(cfg.device)
    device = models.resolve_device(cfg.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    dtype = models.resolve_dtype(cfg.dtype, device)
    run_dir = rundir.prepare_run_dir(
        cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, is_main=ctx.is_main
    )
    distributed.barrier(ctx)
    rng.seed_everything(cfg.seed)
    return Run(config=cfg, command=command, ctx=ctx, device=device, dtype=dtype, dir=run_dir)


def load_trainable(cfg: TrainConfig, run: Run):
    """The model to train: full weights, or LoRA adapters on a frozen base."""
    model = models.load_causal_lm(
        cfg.model,
        dtype=run.dtype,
        device=run.device,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    if cfg.lora_rank > 0:
        targets = [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
        model = models.apply_lora(
            model,
            rank=cfg.lora_rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=targets or None,
        )
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def total_steps(cfg: TrainConfig, num_examples: int, ctx: distributed.DistContext) -> int:
    """``--max-steps``, or the steps that ``--num-epochs`` epochs take at the global batch."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    global_batch = cfg.batch_size * cfg.grad_accum * ctx.world_size
    return max(1, math.ceil(cfg.num_epochs * num_examples / global_batch))


def build_optimization(cfg: TrainConfig, model: torch.nn.Module, steps: int):
    optimizer = build_optimizer(
        model,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
    )
    warmup = warmup_steps_for(cfg.warmup_steps, cfg.warmup_ratio, steps)
    scheduler = build_scheduler(optimizer, kind=cfg.lr_scheduler, warmup_steps=warmup, total_steps=steps)
    return optimizer, scheduler


def maybe_resume(
    cfg: TrainConfig,
    run: Run,
    *,
    models: dict[str, torch.nn.Module],
    optimizer,
    scheduler,
    stream,
) -> int:
    """Restore the newest checkpoint when ``--resume``; return the step to continue from."""
    if not cfg.resume:
        return 0
    path = checkpoint.latest_checkpoint(run.dir)
    state = checkpoint.load_checkpoint(
        path, models=models, optimizers={"optimizer": optimizer, "scheduler": scheduler}
    )
    stream.load_state_dict(state["stream"])
    rng.set_rng_state_bytes(state["rng"][min(run.ctx.rank, len(state["rng"]) - 1)])
    run.started -= state.get("elapsed_s", 0.0)
    if run.ctx.is_main:
        print(f"resumed from {path} (step {state['step']})", flush=True)
    return int(state["step"])


def save_step(run: Run, step: int, *, models: dict, optimizer, scheduler, stream) -> None:
    # Every rank's RNG state is gathered so each continues its own sequence. States travel
    # as bytes: gloo's object gather cannot carry tensors.
    states = [rng.rng_state_bytes()]
    if run.ctx.enabled:
        gathered: list = [None] * run.ctx.world_size
        torch.distributed.all_gather_object(gathered, states[0])
        states = gathered
    if run.ctx.is_main:
        checkpoint.save_checkpoint(
            run.dir,
            step,
            models={k: models_unwrap(m) for k, m in models.items()},
            optimizers={"optimizer": optimizer, "scheduler": scheduler},
            extra={"stream": stream.state_dict(), "rng": states, "elapsed_s": run.elapsed()},
            keep=run.config.save_total_limit,
        )
    distributed.barrier(run.ctx)


def models_unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return models.unwrap(model)


def open_logger(run: Run, resume_step: int) -> MetricLogger:
    """Start the run's record: ``config.yaml`` (new runs) and the metric log.

    Called once data and models have loaded, so a run that fails on bad input leaves no
    half-made run behind that a corrected re-run would have to ``--overwrite``.
    """
    if run.ctx.is_main and not run.config.resume:
        rundir.write_config(run.dir, dataclasses.asdict(run.config), command=run.command)
    return MetricLogger(
        run.dir,
        report_to=run.config.report_to,
        enabled=run.ctx.is_main,
        resume_step=resume_step if run.config.resume else None,
        config=dataclasses.asdict(run.config),
    )


def optimizer_step(model: torch.nn.Module, optimizer, scheduler, max_grad_norm: float):
    """Clip (when ``max_grad_norm`` > 0), step and schedule; return the pre-clip grad norm.

    Gradients are left in place so the caller can measure memory before zeroing them.
    """
    grad_norm = None
    if max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    return grad_norm


def finish_run(
    run: Run,
    *,
    logger: MetricLogger,
    final_log: dict[str, Any],
    headline: tuple[str, ...] | None = None,
    model: torch.nn.Module,
    tokenizer,
    steps: int,
    tokens: int,
    roles: dict[str, dict[str, int]],
    final_metrics: dict[str, Any],
    data_report: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Log ``final_log`` at the last step and close the log; write ``final/``,
    ``summary.json`` and ``README.md``; print the closing line with the ``headline`` metrics
    (none when the caller prints its own); return the summary."""
    logger.log(steps, final_log)
    logger.close()
    cfg = run.config
    summary = {
        "command": run.command,
        **(extra or {}),
        "steps": steps,
        "wall_s": round(run.elapsed(), 3),
        "tokens": tokens,
        **memory.memory_summary(roles),
        "final_metrics": final_metrics,
    }
    if data_report:
        summary["data"] = data_report
    if run.ctx.is_main:
        card = rundir.model_card(
            command=run.command,
            base_model=cfg.model,
            data=cfg.data,
            config=dataclasses.asdict(cfg),
            results=final_metrics,
        )
        models.save_model(model, tokenizer, run.dir / "final", card=card)
        (run.dir / "README.md").write_text(card, encoding="utf-8")
        rundir.write_summary(run.dir, summary)
        if headline is not None:
            print(f"{run.command}: {steps} steps in {summary['wall_s']:.1f}s; "
                  f"{format_metrics(final_metrics, headline)}; model in {run.dir / 'final'}",
                  flush=True)
    distributed.barrier(run.ctx)
    return summary


def run_metrics(run: Run, scheduler, throughput: Throughput, stream, grad_norm) -> dict[str, Any]:
    """The figures every trainer logs about the run itself (DESIGN.md, contract: metric names)."""
    record = {
        "lr": scheduler.get_last_lr()[0],
        "tokens_per_sec": throughput.rate() * run.ctx.world_size,
        "elapsed_s": run.elapsed(),
        "epoch": stream.epoch,
        "memory/peak_rss_bytes": memory.peak_rss_bytes(),
    }
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    return record


class Throughput:
    """Tokens per second over the interval since the last ``rate()`` call."""

    def __init__(self) -> None:
        self.tokens = 0
        self._mark_tokens = 0
        self._mark_time = time.perf_counter()

    def add(self, n: int) -> None:
        self.tokens += n

    def rate(self) -> float:
        now = time.perf_counter()
        value = (self.tokens - self._mark_tokens) / max(now - self._mark_time, 1e-9)
        self._mark_tokens, self._mark_time = self.tokens, now
        return value
