"""The start and end of every training run, and the pieces of a step, shared by every trainer.

``start_run`` resolves the process group, device, precision, run directory and seed;
``load_trainable`` loads the policy (full or LoRA); ``build_optimization`` the optimizer and
schedule; ``maybe_resume`` restores a checkpoint; ``finish_run`` writes ``final/``,
``summary.json`` and the model card. The loop in between is ``preflab.training.steps`` for
the step-based trainers (sft, rm, dpo, kto, online-dpo's DPO steps) and ``preflab.rl.loop``
for the RL ones (ppo, rloo, grpo, reinforce-pp).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from preflab import models
from preflab.config import TrainConfig, check_paths
from preflab.data.tokenize import forget_checked
from preflab.errors import (
    ConfigError,
    NonFiniteProbabilities,
    NonFiniteReward,
    ResumeError,
    TrainingDiverged,
)
from preflab.runtime import checkpoint, distributed, memory, precision, rng, rundir, signals
from preflab.runtime.metrics import MetricLogger, format_metrics
from preflab.runtime.optim import build_optimizer, build_scheduler, warmup_steps_for


@dataclass
class Run:
    """Where and how this process runs."""

    config: Any
    command: str
    ctx: distributed.DistContext
    device: torch.device
    precision: precision.Precision
    dir: Path
    scaler: torch.amp.GradScaler | None = None
    """fp16-mixed's loss scaler (``backward``, ``optimizer_step``); None otherwise."""
    started: float = field(default_factory=time.perf_counter)
    claimed: bool = False
    """``--overwrite``: the old run has been removed (``claim_run_dir``)."""
    restarted: bool = False
    """``--resume`` found no checkpoint: the run starts again from step 0 in its directory."""
    skipped_steps: int = 0
    """Optimizer steps skipped for a non-finite loss or gradient (``--nonfinite skip``)."""
    overflow_steps: int = 0
    """fp16-mixed: optimizer steps the loss scaler skipped, their scaled gradients overflowing."""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def trainer(train: Callable) -> Callable:
    """Mark a command's ``train(cfg, ...)``: it runs under ``cfg.precision``'s autocast, so
    every forward pass of the run (training, rollouts, evaluation) computes in the precision's
    compute dtype; ``backward`` steps out of it."""

    @functools.wraps(train)
    def run_in_precision(cfg, *args, **kwargs):
        with precision.scope(cfg.precision, cfg.device):
            return train(cfg, *args, **kwargs)

    return run_in_precision


def start_run(cfg: TrainConfig, command: str) -> Run:
    ctx = distributed.setup(cfg.device)
    device = models.resolve_device(cfg.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    mode = precision.resolve(cfg.precision, device)
    if mode.scaled and getattr(cfg, "fsdp", False):
        raise ConfigError("--precision fp16-mixed does not shard: its loss scaler is not "
                          "built for FSDP here; use bf16-mixed with --fsdp", field="precision")
    run_dir = rundir.prepare_run_dir(
        cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, is_main=ctx.is_main
    )
    distributed.barrier(ctx)
    rng.seed_everything(cfg.seed)
    return Run(config=cfg, command=command, ctx=ctx, device=device, precision=mode, dir=run_dir,
               scaler=mode.scaler(device.type))


def load_options(cfg: TrainConfig, run: Run, *, as_policy: bool = False) -> dict:
    """``models.load_*`` settings for a role of this run: ``as_policy`` (the trained models and
    the reference, which must compute as the policy does at step 0) in the dtype the policy's
    weights are in; the other frozen roles in the precision's frozen dtype."""
    dtype = (run.precision.policy_dtype(cfg.lora_rank > 0) if as_policy
             else run.precision.frozen)
    return dict(dtype=dtype, device=run.device, allow_pickle=cfg.allow_pickle,
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation)


def warn_if_updates_round_away(cfg: TrainConfig, run: Run, model: torch.nn.Module) -> None:
    """bf16-true: warn when an update of the learning rate's size cannot move most of the
    trained weights (``precision.unmoved_fraction``)."""
    if run.precision.trained != torch.bfloat16 or not run.ctx.is_main:
        return
    trained = [p for p in model.parameters() if p.requires_grad and p.dtype == torch.bfloat16]
    share = precision.unmoved_fraction(trained, cfg.learning_rate)
    if share > precision.UNMOVED_WARNING:
        print(f"warning: --precision bf16-true at --learning-rate {cfg.learning_rate:g}: an "
              f"update of that size leaves {share:.0%} of the trained weights where they are "
              "(bfloat16 keeps 8 significant bits); --precision bf16-mixed keeps float32 "
              "master weights (docs/precision.md)",
              file=sys.stderr, flush=True)


def load_trainable(cfg: TrainConfig, run: Run):
    """The model to train: full weights, or LoRA adapters on a frozen base."""
    model = models.load_causal_lm(
        cfg.model,
        **load_options(cfg, run, as_policy=True),
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
    prepare_trained(cfg, run, model)
    return model


def load_reference(cfg: TrainConfig, run: Run, path: str) -> torch.nn.Module:
    """A frozen reference copy of the policy, held as the policy's weights are, its ties moved
    as the policy's are (``precision.prepare_trained``): at step 0 the two compute the same."""
    model = models.load_causal_lm(path, **load_options(cfg, run, as_policy=True))
    precision.snap_ties_of(model.parameters(), run.precision)
    return model.eval().requires_grad_(False)


def prepare_trained(cfg: TrainConfig, run: Run, model: torch.nn.Module) -> None:
    """The trained model's weights as the precision trains them (``precision.prepare_trained``),
    with a note when weights were moved off ties, and bf16-true's warning."""
    moved, total = precision.prepare_trained(model, run.precision)
    if moved and run.ctx.is_main and moved >= 0.001 * total:
        print(f"note: {moved / total:.1%} of the trained weights lay exactly halfway between two "
              f"{str(run.precision.compute).removeprefix('torch.')} values (as a dequantized "
              "GGUF model's do); each starts at the value the forward rounds it to, so that "
              "the first update does not tip them all a whole step (docs/precision.md)",
              flush=True)
    warn_if_updates_round_away(cfg, run, model)


def check_fsdp(cfg, run: Run) -> None:
    """``--fsdp`` is refused in one process and with LoRA; checked before anything is loaded.
    (A sharded model samples in lockstep on every process: ``generation.generate``.)"""
    if not getattr(cfg, "fsdp", False):
        return
    if cfg.lora_rank:
        raise ConfigError("--fsdp is built for full fine-tuning; with --lora-rank the adapters "
                          "are small enough to replicate (leave out --fsdp)", field="fsdp")
    if not run.ctx.enabled:
        raise ConfigError("--fsdp shards over processes: launch with torchrun --nproc-per-node N "
                          "(or accelerate launch), N >= 2", field="fsdp")


def samples_here(cfg, run: Run) -> bool:
    """Whether this process samples from the trained model: rank 0 alone, or every process
    when the model is sharded (``--fsdp``: sampling it is collective, in lockstep)."""
    return run.ctx.is_main or bool(getattr(cfg, "fsdp", False))


def shard_if_asked(cfg, run: Run, model: torch.nn.Module) -> torch.nn.Module:
    """``--fsdp``: shard the trained model over the processes (``distributed.shard``)."""
    if not getattr(cfg, "fsdp", False):
        return model
    check_fsdp(cfg, run)
    return distributed.shard(model)


def require_packing(model: torch.nn.Module, tokenizer) -> None:
    """``--padding-free``: refuse (``ConfigError``) a model whose attention reaches across
    packed sequences (``logprobs.check_packing``), before any training."""
    from preflab.models.logprobs import check_packing

    try:
        check_packing(model, vocab_size=min(len(tokenizer),
                                            model.get_input_embeddings().num_embeddings))
    except ValueError as exc:
        raise ConfigError(str(exc), field="padding_free") from None


def sampled_evaluation(cfg, run: Run, tokenizer, policy) -> tuple[list[str], Any]:
    """What a trainer samples at evaluation: the first ``--eval-num-prompts`` of
    ``--eval-prompts`` (none when it is empty), and ``--gold-reward`` as a function of
    (prompts, completions) returning scores (None when it is empty)."""
    from preflab.data import load_prompt_dataset
    from preflab.rewards import load_reward

    prompts: list[str] = []
    if cfg.eval_prompts:
        examples, _ = load_prompt_dataset(cfg.eval_prompts, tokenizer, policy)
        prompts = [e.prompt for e in examples[: cfg.eval_num_prompts]]
    gold_fn = None
    if cfg.gold_reward:
        gold = load_reward(cfg.gold_reward, flag="--gold-reward", device=run.device,
                           dtype=run.precision.frozen, allow_pickle=cfg.allow_pickle,
                           trust_remote_code=cfg.trust_remote_code)
        gold_fn = lambda p, c, **kw: gold(p, c, **kw)[0]  # noqa: E731
    return prompts, gold_fn


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
    """Restore the newest checkpoint when ``--resume``; return the step to continue from.

    A resume must use the settings the run started with: every changed setting outside
    ``rundir.RESUMABLE_CHANGES`` (logging and checkpoint cadence, a larger ``--max-steps``)
    is refused, listed with its old and new value. A run stopped before its first
    checkpoint starts again from step 0 in the same directory.
    """
    if not cfg.resume:
        return 0
    found = checkpoint.list_checkpoints(run.dir)
    step_of = int(found[-1].name.split("-")[1]) if found else None
    changes = rundir.config_changes(run.dir, dataclasses.asdict(cfg), checkpoint_step=step_of)
    if changes:
        raise ResumeError(
            "--resume with other settings than the run was started with: "
            + "; ".join(changes) + ". Resume with the original settings, or start a new run "
            "(--overwrite, or another --output-dir)", path=str(run.dir))
    if not found:
        run.restarted = True
        if run.ctx.is_main:
            print(f"note: {run.dir} holds no checkpoint yet (the run stopped before its first); "
                  "starting it again from step 0", flush=True)
        return 0
    path = found[-1]
    state = checkpoint.load_checkpoint(
        path, models=models, optimizers=_stateful(run, optimizer, scheduler)
    )
    stream.load_state_dict(state["stream"])
    rng.set_rng_state_bytes(state["rng"][min(run.ctx.rank, len(state["rng"]) - 1)])
    run.started -= state.get("elapsed_s", 0.0)
    if run.ctx.is_main:
        print(f"resumed from {path} (step {state['step']})", flush=True)
    return int(state["step"])


def claim_run_dir(run: Run) -> None:
    """Make the directory the new run's: with ``--overwrite``, remove the previous run now that
    the new one has loaded its data and models (a bad input never costs the old run)."""
    if run.claimed:
        return
    if run.ctx.is_main and run.config.overwrite and rundir.holds_run(run.dir):
        rundir.clear_old_run(run.dir)
    run.claimed = True
    distributed.barrier(run.ctx)


def save_step(run: Run, step: int, *, models: dict, optimizer, scheduler, stream) -> None:
    # Every rank's RNG state is gathered so each continues its own sequence. States travel
    # as bytes: gloo's object gather cannot carry tensors.
    states = [rng.rng_state_bytes()]
    if run.ctx.enabled:
        gathered: list = [None] * run.ctx.world_size
        torch.distributed.all_gather_object(gathered, states[0])
        states = gathered
    # the sharded models' full weights and optimizer state: every rank takes part
    sharded = {k: m for k, m in models.items() if distributed.is_sharded(m)}
    full = {k: distributed.full_weights(m) for k, m in sharded.items()}
    full_optimizer = (distributed.full_optimizer_state(distributed.optimizer_owner(sharded),
                                                       optimizer) if sharded else None)
    if run.ctx.is_main:
        checkpoint.save_checkpoint(
            run.dir,
            step,
            models={k: models_unwrap(m) for k, m in models.items()},
            optimizers=_stateful(run, optimizer, scheduler),
            extra={"stream": stream.state_dict(), "rng": states, "elapsed_s": run.elapsed()},
            keep=run.config.save_total_limit,
            gathered=full,
            gathered_optimizer=full_optimizer,
        )
    distributed.barrier(run.ctx)


def _stateful(run: Run, optimizer, scheduler) -> dict:
    """What a checkpoint restores beside the weights: optimizer, schedule, loss scaler."""
    return {"optimizer": optimizer, "scheduler": scheduler,
            **({"scaler": run.scaler} if run.scaler is not None else {})}


def models_unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return models.unwrap(model)


def open_logger(run: Run, resume_step: int) -> MetricLogger:
    """Start the run's record: ``config.yaml`` and the metric log.

    Called once data and models have loaded, so a run that fails on bad input leaves no
    half-made run behind that a corrected re-run would have to ``--overwrite``. A resumed run
    rewrites ``config.yaml`` with the settings it now runs with (only those a resume may
    change can differ).
    """
    claim_run_dir(run)
    if run.ctx.is_main:
        rundir.write_config(run.dir, dataclasses.asdict(run.config), command=run.command)
    resuming = run.config.resume
    return MetricLogger(
        run.dir,
        report_to=run.config.report_to,
        enabled=run.ctx.is_main,
        resume_step=(-1 if run.restarted else resume_step) if resuming else None,
        config=dataclasses.asdict(run.config),
    )


def last_checkpoint(run: Run) -> str:
    found = checkpoint.list_checkpoints(run.dir)
    return str(found[-1]) if found else "none (--save-every N writes them)"


def _any_nonfinite(run: Run, figures: dict, *, local: bool = False) -> bool:
    """Whether any figure (tensors or floats) holds NaN or an infinity, on any process (one
    all-reduce, so every process takes the same branch) or, with ``local``, on this one."""
    values = [torch.as_tensor(v, dtype=torch.float64).detach().cpu().reshape(-1)
              for v in figures.values() if v is not None]
    bad = bool(values) and not bool(torch.isfinite(torch.cat(values)).all())
    if run.ctx.enabled and not local:
        bad = bool(distributed.all_reduce_max(torch.tensor([float(bad)]), run.ctx).item())
    return bad


def _shown(figures: dict) -> str:
    return ", ".join(f"{k} {_first_value(v):.4g}" for k, v in figures.items() if v is not None)


def check_finite(run: Run, step: int | str, **figures) -> bool:
    """True when every figure (tensors or floats: loss, gradient norm, ...) is finite on every
    process. ``step`` is an optimizer step, or a label such as ``"iteration 3"``.

    Otherwise, with ``--nonfinite stop`` (the default) raise ``TrainingDiverged`` naming the
    step and the last good checkpoint; with ``skip`` count the step and return False.
    """
    if not _any_nonfinite(run, figures):
        return True
    where = f"step {step}" if isinstance(step, int) else step
    if getattr(run.config, "nonfinite", "stop") == "skip":
        run.skipped_steps += 1
        if run.ctx.is_main:
            print(f"warning: {where} skipped: {_shown(figures)}", file=sys.stderr, flush=True)
        return False
    raise TrainingDiverged(
        f"the run diverged at {where}: {_shown(figures)} (not finite"
        f"{' on some process' if run.ctx.enabled else ''}); it stopped before applying that "
        f"update, and writes no final/. Last good checkpoint: {last_checkpoint(run)}. Lower "
        "--learning-rate, use --precision fp32, or pass --nonfinite skip to skip such steps")


def _first_value(v) -> float:
    """The first non-finite entry of ``v`` (or its first entry when all are finite)."""
    flat = torch.as_tensor(v, dtype=torch.float64).detach().cpu().reshape(-1)
    bad = flat[~torch.isfinite(flat)]
    return float(bad[0] if len(bad) else flat[0]) if len(flat) else float("nan")


def require_finite(run: Run, where: str, *, local: bool = False, **figures) -> None:
    """Like ``check_finite`` but never skipped: a NaN reward or log-prob has no step to skip.
    ``local``: this process alone checks (work only the main process does, such as judging
    an online-DPO round, must not start a collective the others are not in)."""
    if _any_nonfinite(run, figures, local=local):
        raise TrainingDiverged(f"the run diverged at {where}: {_shown(figures)} (not finite); "
                               f"final/ is not written. Last good checkpoint: "
                               f"{last_checkpoint(run)}")


@contextlib.contextmanager
def diverged_at(run: Run, where: str):
    """Report sampling from NaN probabilities, or a reward function's NaN, as the run diverging
    at ``where`` (an iteration), with the last good checkpoint, instead of a traceback."""
    try:
        yield
    except NonFiniteReward as exc:
        raise TrainingDiverged(f"the run diverged at {where}: {exc.message}; final/ is not "
                               f"written. Last good checkpoint: {last_checkpoint(run)}") from None
    except NonFiniteProbabilities:
        raise TrainingDiverged(
            f"the run diverged at {where}: the policy's next-token probabilities hold NaN or "
            f"inf, so nothing can be sampled; final/ is not written. Last good checkpoint: "
            f"{last_checkpoint(run)}. Lower --learning-rate, or use --precision fp32") from None


def backward(run: Run, loss: torch.Tensor) -> None:
    """``loss.backward()`` outside the forward's autocast (``trainer``), the loss scaled first
    under fp16-mixed."""
    if run.scaler is not None:
        loss = run.scaler.scale(loss)
    with torch.autocast(run.device.type, enabled=False):
        loss.backward()


def optimizer_step(model: torch.nn.Module | list, optimizer, scheduler, max_grad_norm: float, *,
                   run: Run | None = None, step: int | str = 0, loss=None):
    """Check, clip (when ``max_grad_norm`` > 0), step and schedule; return the pre-clip norm.

    The gradient norm is measured on every step, and with ``run`` given the loss and the norm
    are checked before the update (``check_finite``): a non-finite step is never applied.
    Under fp16-mixed the gradients are unscaled first, and a step whose gradients overflowed
    (a finite loss, a non-finite norm) is the loss scaler's to skip: it is counted in
    ``run.overflow_steps`` and the scale shrinks; it is not a divergence.
    Gradients are left in place so the caller can measure memory before zeroing them.
    """
    params = [p for p in (model.parameters() if isinstance(model, torch.nn.Module) else model)
              if p.grad is not None]
    scaler = run.scaler if run is not None else None
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    grad_norm = distributed.whole(grad_norm)  # sharded (FSDP2) gradients: the norm of all
    if scaler is not None and not _any_nonfinite(run, {"loss": loss}):
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skips the update when the unscaled gradients hold inf/NaN
        scaler.update()  # and then, only then, shrinks the scale
        run.overflow_steps += int(scaler.get_scale() < scale)
        scheduler.step()
        return grad_norm
    if run is not None and not check_finite(run, step, loss=loss, grad_norm=grad_norm):
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()  # the schedule counts steps taken or skipped alike
        if scaler is not None:
            scaler.update()  # unscale_ was called: the scaler must close the step
        return grad_norm
    optimizer.step()
    scheduler.step()
    return grad_norm


def step_boundary(run: Run, step: int, last: int, *, models: dict | Callable[[], dict],
                  optimizer, scheduler, stream) -> None:
    """The end of every optimizer step (PPO: iteration): a checkpoint when ``--save-every`` is
    due (not at the ``last`` step, which writes final/), then stop if a signal asked."""
    state = dict(optimizer=optimizer, scheduler=scheduler, stream=stream)
    saved = bool(run.config.save_every and step % run.config.save_every == 0 and step != last)
    if saved:
        save_step(run, step, models=models() if callable(models) else models, **state)
    stop_if_asked(run, step, models=models, saved=saved, **state)


def stop_if_asked(run: Run, step: int, *, models: dict | Callable[[], dict], optimizer,
                  scheduler, stream, saved: bool = False) -> None:
    """At a step boundary: if SIGTERM or SIGINT arrived, checkpoint this step (unless the loop
    just did, ``saved``) and stop (``signals.Interrupted``, exit 143 or 130). ``models`` may be
    a function, called only when stopping (PPO's roles gather their weights for it)."""
    signals.arm()
    signum = signals.requested_signal(run.ctx)
    if signum is None:
        return
    if not saved:
        save_step(run, step, models=models() if callable(models) else models,
                  optimizer=optimizer, scheduler=scheduler, stream=stream)
    raise signals.interrupted(signum, step, str(run.dir / "checkpoints" / f"step-{step}"))


def progress_bar(run: Run, *, total: int, initial: int, desc: str):
    """A tqdm bar on a terminal; elsewhere (a log file) a plain line every 10% of the run."""
    from preflab.runtime.progress import progress_bar as bar

    return bar(total=total, initial=initial, desc=desc,
               enabled=bool(run.config.progress and run.ctx.is_main))


def _all_finite(model: torch.nn.Module, ctx: distributed.DistContext) -> bool:
    """Every weight finite, on every process (a sharded model's ranks each hold a slice, and
    must all take the same branch: what follows gathers the weights)."""
    bad = not all(bool(torch.isfinite(distributed.local(p)).all()) for p in model.parameters())
    if ctx.enabled:
        bad = bool(distributed.all_reduce_max(torch.tensor([float(bad)]), ctx).item())
    return not bad


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
        "world_size": run.ctx.world_size,
        "precision": run.precision.name,
        **(extra or {}),
        "steps": steps,
        "wall_s": round(run.elapsed(), 3),
        "tokens": tokens,
        **memory.memory_summary(roles),
        "final_metrics": final_metrics,
    }
    if data_report:
        summary["data"] = data_report
    if not _all_finite(model, run.ctx):  # defence in depth: the step checks should have stopped it
        raise TrainingDiverged(f"the final weights hold NaN or infinite values; final/ was not "
                               f"written. Last good checkpoint: {last_checkpoint(run)}")
    if run.skipped_steps:
        summary["skipped_nonfinite_steps"] = run.skipped_steps
    if run.scaler is not None:
        summary["amp"] = {"loss_scale": run.scaler.get_scale(),
                          "overflow_steps": run.overflow_steps}
    full_weights = distributed.full_weights(model) if distributed.is_sharded(model) else None
    if run.ctx.is_main:
        card = rundir.model_card(
            command=run.command,
            base_model=cfg.model,
            data=cfg.data,
            config=dataclasses.asdict(cfg),
            results=final_metrics,
        )
        models.save_model(model, tokenizer, run.dir / "final", card=card,
                          state_dict=full_weights)
        (run.dir / "README.md").write_text(card, encoding="utf-8")
        rundir.write_summary(run.dir, summary)
        rundir.release_lock(run.dir)
        if headline is not None:
            figures = format_metrics(final_metrics, headline)  # empty without held-out data
            print(f"{run.command}: {steps} steps in {summary['wall_s']:.1f}s; "
                  f"{figures + '; ' if figures else ''}model in {run.dir / 'final'}", flush=True)
    distributed.barrier(run.ctx)
    return summary


def run_metrics(run: Run, scheduler, throughput: Throughput, stream, grad_norm) -> dict[str, Any]:
    """The figures every trainer logs about the run itself (docs/architecture.md, contract:
    metric names)."""
    record = {
        "lr": scheduler.get_last_lr()[0],
        "tokens_per_sec": throughput.rate() * run.ctx.world_size,
        "elapsed_s": run.elapsed(),
        "epoch": stream.epoch,
        "memory/peak_rss_bytes": memory.peak_rss_bytes(),
    }
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    if run.skipped_steps:
        record["nonfinite/skipped_steps"] = run.skipped_steps
    if run.scaler is not None:
        record["amp/loss_scale"] = run.scaler.get_scale()
        record["amp/overflow_steps"] = run.overflow_steps
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


OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def run_command(train, cfg: TrainConfig):
    """Run ``train(cfg)`` as a command.

    The paths its settings name are checked first: local ones only, since the trainer reads
    and checks its data before any hub id is looked up. SIGTERM and SIGINT stop it at a step
    boundary with a checkpoint (``signals.graceful_stop``). Running out of memory is reported
    with the batch size to change. The run directory's lock is released however it ends.
    """
    check_paths(cfg, network=False)  # the data is read and checked next; the hub after that
    out = Path(cfg.output_dir)
    made = not out.exists()
    try:
        with signals.graceful_stop(armed=False):
            return train(cfg)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        text = str(exc).lower()
        if not isinstance(exc, (torch.OutOfMemoryError, MemoryError)) and not any(
                m in text for m in OOM_MARKERS):
            raise
        raise ConfigError(
            f"ran out of memory with --batch-size {cfg.batch_size} (--max-length "
            f"{cfg.max_length}): try a smaller --batch-size with a larger --grad-accum, "
            "--gradient-checkpointing or --lora-rank; `preflab plan --model ...` says what "
            "fits", field="batch_size") from None
    finally:
        rundir.release_lock(out)
        forget_checked()
        if made and out.is_dir() and not any(out.iterdir()):
            with contextlib.suppress(OSError):  # another process may remove it first
                out.rmdir()  # a run that failed before writing anything leaves no directory
