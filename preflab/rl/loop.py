"""The one loop of every RL method on prompts (``ppo``, ``rloo``, ``grpo``, ``reinforce-pp``).

    preflab ppo|rloo|grpo|reinforce-pp --model SFT --data PROMPTS --reward RM --output-dir RUN

``train`` reads top to bottom; one step is one iteration:

1. Rollout: ``--rollout-batch-size`` prompts, ``Algorithm.samples`` responses each (PPO and
   REINFORCE++ one, RLOO and GRPO ``--num-generations``), sampled by the policy in eval mode
   with the KV cache, scored, with their no-grad passes (``rl.common.collect_rollout``).
2. Advantages: the method's own (``Algorithm.advantages``): PPO's GAE on the per-token reward
   with its value model, RLOO's leave-one-out baseline, GRPO's group normalisation,
   REINFORCE++'s returns normalised over the batch.
3. Updates (``update``): ``Algorithm.passes`` passes over ``--num-minibatches`` shuffled
   minibatches, split into micro-batches of ``--batch-size``: the method's policy loss (and
   PPO's value loss), gradient clipping, one AdamW step per minibatch.
4. Figures: the method's metrics (``Algorithm.figures``: TRL's names), averaged over
   processes; PPO's adaptive KL coefficient moves; ``eval/*`` every ``--eval-every``.
5. Step boundary: a checkpoint every ``--save-every`` iterations, a stop on a signal.

Under torchrun each process samples its own prompts (a group never spans processes), and each
loss is normalised by the count over every process (tokens, or responses), so N processes give
the update of one process holding all N rollouts. An algorithm file holds only what differs:
its config, its ``Algorithm`` and ``main``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from preflab.rl.common import (
    Rollout,
    RolloutConfig,
    close_run,
    collect_rollout,
    global_sums,
    open_run,
    sampled_figures,
    single_pass,
    sync_gradients,
    trainable_params,
)
from preflab.rl.kl_control import FixedKLController
from preflab.rl.tensors import micro_batches, response_slice, update_logprobs
from preflab.runtime import memory
from preflab.runtime.metrics import format_metrics
from preflab.runtime.stream import ExampleStream
from preflab.training import session

Loss = Callable[[Any, Tensor, dict, dict, Tensor, Tensor], tuple[Tensor, dict]]


def _one(cfg) -> int:
    return 1


def _true(cfg) -> bool:
    return True


def _nothing(cfg) -> dict:
    return {}


@dataclass(frozen=True)
class Algorithm:
    """What one RL method does that the loop does not; ``cfg`` is the method's config."""

    name: str
    """The command: the run's and the progress bar's name."""
    passes: Callable[[Any], int]
    """Passes over each rollout (``--ppo-epochs``, ``--num-iterations``)."""
    advantages: Callable[[Any, Rollout, float, session.Run], dict]
    """``(cfg, rollout, kl_coef, run) -> targets``: ``advantages`` (``[B]`` one per response,
    or ``[B, R]`` per token) and what else its losses and figures read (PPO: ``returns``)."""
    policy_loss: Loss
    """``(cfg, logprobs [b, R], old, targets, rows, mask [b, R]) -> (loss, stats)``: one
    micro-batch's loss (``rows`` index ``old`` and ``targets``) and its statistics, detached
    0-d tensors by metric name."""
    figures: Callable[[Any, Rollout, dict, dict, float, session.Run], dict]
    """``(cfg, rollout, targets, update statistics, kl_coef, run) -> figures``: the
    iteration's metrics, ``loss`` among them, the same on every process."""
    final_metrics: Callable[[dict], dict]
    """The last iteration's figures ``summary.json`` keeps."""
    shown: tuple[str, ...]
    """The figures in the progress bar."""
    samples: Callable[[Any], int] = _one
    """Responses per prompt (prompt-major rows: prompt ``i``'s ``k``-th is row ``i * K + k``)."""
    by_tokens: Callable[[Any], bool] = _true
    """Whether the loss is a mean over tokens (else over responses): each micro-batch weighs
    by its share of the minibatch's tokens (or responses) over every process."""
    value_loss: Loss | None = None
    """A critic's loss (PPO): ``(cfg, values [b, R], old, targets, rows, mask) -> (loss as
    added to the policy's, stats)``. A method with one holds and trains a value role."""
    kl_control: Callable[[Any], FixedKLController] | None = None
    """The KL coefficient's controller (PPO: fixed or adaptive, moved by ``objective/kl`` and
    kept in checkpoints); None: ``cfg.kl_coef`` throughout."""
    summary: Callable[[Any], dict] = _nothing
    """The method's own entries in ``summary.json``."""

    @property
    def critic(self) -> bool:
        return self.value_loss is not None


class RunState:
    """What a checkpoint needs beyond weights and optimizer when the KL coefficient moves: the
    prompt stream and the coefficient."""

    def __init__(self, stream: ExampleStream, kl_ctl: FixedKLController) -> None:
        self.stream, self.kl_ctl = stream, kl_ctl

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "kl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.kl_ctl.load_state_dict(state["kl"])


def update(roles, optimizer, scheduler, batch: dict, old: dict, targets: dict, cfg,
           algorithm: Algorithm, run: session.Run, generator: torch.Generator, on_step, *,
           iteration: int = 0, live: dict | None = None) -> dict[str, float]:
    """``algorithm.passes(cfg)`` passes over shuffled minibatches; returns the mean statistics
    (``loss/policy`` and the losses' own), each micro-batch weighed by its share of the tokens
    (or responses) this process holds.

    ``live``: the differentiable ``logprobs`` (and ``values``) of the whole batch in a single
    pass (``rl.common.single_pass``), used instead of a new forward pass. Each minibatch's loss
    and gradient norm are checked before its optimizer step (``session.optimizer_step``): a
    non-finite one stops the run, or is skipped."""
    P, mask = batch["context_length"], batch["response_mask"].to(run.device)
    by_tokens = algorithm.by_tokens(cfg)
    n_rows = len(mask)
    size = n_rows // cfg.num_minibatches
    totals: dict[str, float] = {}
    updates, world = 0, run.ctx.world_size
    for _ in range(algorithm.passes(cfg)):
        order = torch.randperm(n_rows, generator=generator)
        minibatches = [order[s : s + size] for s in range(0, n_rows, size)]
        local = [float(mask[mb].sum()) if by_tokens else float(len(mb)) for mb in minibatches]
        counts = global_sums(local, run)  # the minibatches' counts on every process: one collective
        for minibatch, local_count, count in zip(minibatches, local, counts):
            minibatch_loss = 0.0
            for rows in micro_batches(minibatch, cfg.batch_size):
                ids = batch["input_ids"][rows].to(run.device)
                am = batch["attention_mask"][rows].to(run.device)
                m = mask[rows]
                part = float(m.sum()) if by_tokens else float(len(rows))
                # sync_gradients averages over processes: weigh by the global count, so N
                # processes make the update of one holding every rollout
                share = part * world / max(count, 1.0)
                logprobs = update_logprobs(roles, ids, am, P, cfg.temperature, live, rows)
                loss, stats = algorithm.policy_loss(cfg, logprobs, old, targets, rows, m)
                session.backward(run, loss * share)  # before the value pass: adapters may switch
                stats = {"loss/policy": loss, **stats}
                if algorithm.value_loss is not None:
                    values = (live["values"][rows] if live is not None else
                              response_slice(roles.values(ids, am), P))
                    value_loss, value_stats = algorithm.value_loss(cfg, values, old, targets,
                                                                   rows, m)
                    session.backward(run, value_loss * share)
                    loss, stats = loss + value_loss, {**stats, **value_stats}
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + part / max(local_count, 1.0) * value.item()
                minibatch_loss += part / max(count, 1.0) * loss.item()
            params = trainable_params(roles)  # after the backward passes: see there
            sync_gradients(params, run)
            session.optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm, run=run,
                                   step=f"iteration {iteration}, update {updates + 1}",
                                   loss=minibatch_loss)
            on_step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: v / updates for k, v in totals.items()}


@session.trainer
def train(cfg: RolloutConfig, algorithm: Algorithm) -> dict:
    K, passes = algorithm.samples(cfg), algorithm.passes(cfg)
    setup = open_run(cfg, algorithm.name, critic=algorithm.critic,
                     note=f"; {cfg.rollout_batch_size} prompts x {K} completions per rollout"
                     if K > 1 else "")
    run, roles, timers, role_bytes = setup.run, setup.roles, setup.timers, setup.role_bytes
    iterations = setup.iterations
    optimizer, scheduler = session.build_optimization(
        cfg, roles.trainable, iterations * passes * cfg.num_minibatches)
    kl_ctl = algorithm.kl_control(cfg) if algorithm.kl_control is not None else None
    state = setup.stream if kl_ctl is None else RunState(setup.stream, kl_ctl)
    start = session.maybe_resume(cfg, run, models=roles.checkpoint_models(), optimizer=optimizer,
                                 scheduler=scheduler, stream=state)
    logger = session.open_logger(run, start)
    throughput = session.Throughput()

    def measure() -> None:  # once, while gradients and optimizer state both exist
        if not role_bytes:
            role_bytes.update(roles.tensor_bytes(optimizer))

    def evaluation() -> dict[str, float]:
        return sampled_figures(roles, setup.tokenizer, setup.eval_prompts, setup.reward,
                               setup.gold, cfg)

    if start == 0:
        logger.log(0, evaluation())
    bar = session.progress_bar(run, total=iterations, initial=start, desc=algorithm.name)
    record: dict = {}
    single = single_pass(cfg, passes=passes, rows=cfg.rollout_batch_size * K)
    for it in range(start + 1, iterations + 1):
        seed = cfg.seed * 1_000_003 + it * 7919 + run.ctx.rank
        prompts = [e.prompt for e in setup.stream.next_batch(cfg.rollout_batch_size)]
        rollout = collect_rollout(roles, setup.reward, setup.tokenizer, prompts, cfg, run,
                                  iteration=it, seed=seed, num_samples=K, single=single)
        t_gen, t_score = rollout.seconds["generation"], rollout.seconds["scoring"]
        timers["generation"] += t_gen
        timers["scoring"] += t_score
        clock = time.perf_counter()
        kl_coef = kl_ctl.value if kl_ctl is not None else cfg.kl_coef
        targets = algorithm.advantages(cfg, rollout, kl_coef, run)
        t_fwd = rollout.seconds["forward"] + time.perf_counter() - clock
        timers["forward"] += t_fwd

        clock = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)  # the minibatch order, seeded for resume
        stats = update(roles, optimizer, scheduler, rollout.batch, rollout.old, targets, cfg,
                       algorithm, run, generator, measure, iteration=it, live=rollout.live)
        throughput.add(int(rollout.batch["attention_mask"].sum()) * passes)
        timers["training"] += (t_train := time.perf_counter() - clock)

        figures = algorithm.figures(cfg, rollout, targets, stats, kl_coef, run)
        if kl_ctl is not None:  # after the figures, which log the coefficient this rollout used
            kl_ctl.update(figures["objective/kl"], len(rollout.scores) * run.ctx.world_size)
        bar.update(1)
        record = {
            **figures, "lr": scheduler.get_last_lr()[0],
            "tokens_per_sec": throughput.rate() * run.ctx.world_size, "elapsed_s": run.elapsed(),
            "episode": it * cfg.rollout_batch_size * K * run.ctx.world_size,
            "time/generation": t_gen, "time/scoring": t_score, "time/forward": t_fwd,
            "time/training": t_train, "memory/peak_rss_bytes": memory.peak_rss_bytes(),
        }
        if cfg.eval_every and it % cfg.eval_every == 0 and it != iterations:
            record.update(evaluation())
        if it % cfg.log_every == 0 or it == iterations or "eval/kl" in record:
            logger.log(it, record)
        bar.set_postfix_str(format_metrics(record, algorithm.shown))
        session.step_boundary(run, it, iterations, models=roles.checkpoint_models,
                              optimizer=optimizer, scheduler=scheduler, stream=state)
    bar.close()

    final_eval = evaluation()
    measure()
    if algorithm.critic:  # before final_model(), which drops the value adapter in shared mode
        roles.save_value(run.dir / "final" / "value", setup.tokenizer, run)
    return close_run(setup, cfg, logger=logger, throughput=throughput, final_eval=final_eval,
                     final_metrics=algorithm.final_metrics(record),
                     extra={**algorithm.summary(cfg), "single_pass": single})
