"""The loop RLOO and GRPO share: K completions per prompt, the group as the baseline, no critic.

    preflab rloo|grpo --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

One step is one iteration:

1. Rollout: ``--rollout-batch-size`` prompts, ``--num-generations`` (K) responses each, sampled
   by the policy in eval mode (``preflab.generation.generate``; full softmax at
   ``--temperature``, at most ``--response-length`` tokens, cut at the first EOS). Rows are
   prompt-major, so ``scores.view(-1, K)`` is one group per row.
2. Scores: the reward sources score the decoded text; a response without EOS gets
   ``--missing-eos-penalty`` instead (as PPO).
3. One no-grad pass each: the policy's log-probs of its own tokens (under logits /
   temperature), the reference's. There is no value model. In a single pass
   (``--num-iterations 1``, ``--num-minibatches 1`` and the rollout's completions within
   ``--batch-size``), the update's own policy pass, at the same weights, gives those
   log-probs: only the reference runs here (as in ``preflab ppo``).
4. Advantages, one per response, from its group: the method's own (``GroupMethod.advantages``;
   RLOO: leave-one-out with the KL folded into the reward; GRPO: group-normalised).
5. ``--num-iterations`` passes over ``--num-minibatches`` shuffled minibatches of responses:
   the clipped surrogate (``preflab.losses.clipped_policy_loss``: ``--clip-range``,
   ``--clip-range-high``, the method's importance level, ``--loss-aggregation``; GRPO adds its
   k3 KL term), gradient clipping, one AdamW step per minibatch.

Under torchrun each process samples its own prompts' groups (a group never spans processes),
and the loss is normalised by the count over every process (tokens or sequences, as
``--loss-aggregation`` says), so N processes give the update of one process holding all N
rollouts. The roles are ``preflab.rl.roles`` with ``critic=False``: policy, reference and reward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.config import arg
from preflab.errors import ConfigError
from preflab.losses import LOSS_AGGREGATIONS, clipped_policy_loss, kl_per_token
from preflab.rl.common import (
    RolloutConfig,
    close_run,
    collect_rollout,
    evaluate,
    global_sums,
    open_run,
    reduce_means,
    single_pass,
    sync_gradients,
    trainable_params,
)
from preflab.rl.tensors import (
    micro_batches,
    sampler_logprob_gap,
    sequence_sum,
    update_logprobs,
)
from preflab.runtime import memory
from preflab.runtime.metrics import format_metrics
from preflab.training import session


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


@dataclass(frozen=True)
class GroupMethod:
    """What RLOO and GRPO do differently, given to ``train``."""

    name: str
    advantages: Callable[[GroupConfig, Tensor, dict, Tensor, session.Run], Tensor]
    """``(cfg, scores [B], old (logprobs, ref_logprobs [B, R]), mask, run) -> advantages [B]``."""
    importance: dict[str, str]
    """``--importance-sampling-level`` value -> ``clipped_policy_loss``'s ``importance``."""
    kl_estimator: str
    """The per-token KL the method penalises (logged as ``kl``)."""
    kl_in_loss: bool
    """GRPO: ``kl_coef * k3`` is a loss term; RLOO: the KL is in the reward instead."""


def group_update(roles, optimizer, scheduler, batch, old, advantages, cfg, method: GroupMethod,
                 run: session.Run, generator: torch.Generator, on_step, *,
                 iteration: int = 0, live: dict | None = None) -> dict[str, float]:
    """``--num-iterations`` passes over shuffled minibatches; returns the mean statistics.

    ``live``: the differentiable ``logprobs`` of the whole batch in a single pass
    (``rl.common.single_pass``), used instead of a new forward pass.

    Each micro-batch's loss is weighted by its share of the minibatch's tokens (``token``
    aggregation) or completions (``sequence``, ``fixed``) counted over every process, so the
    averaged gradient is that of the whole minibatch."""
    P, mask = batch["context_length"], batch["response_mask"].to(run.device)
    by_tokens = cfg.loss_aggregation == "token"
    importance = method.importance[cfg.importance_sampling_level]
    kl_coef = cfg.kl_coef if method.kl_in_loss and cfg.kl_coef > 0 else 0.0
    n_rows = len(mask)
    size = n_rows // cfg.num_minibatches
    keys = ("loss/policy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
    totals, updates = torch.zeros(len(keys), dtype=torch.float64), 0
    world = run.ctx.world_size
    for _ in range(cfg.num_iterations):
        order = torch.randperm(n_rows, generator=generator)
        minibatches = [order[s : s + size] for s in range(0, n_rows, size)]
        local = [float(mask[mb].sum()) if by_tokens else float(len(mb)) for mb in minibatches]
        counts = global_sums(local, run)  # one collective per pass
        for minibatch, local_count, count in zip(minibatches, local, counts):
            minibatch_loss = torch.zeros((), dtype=torch.float64)
            for rows in micro_batches(minibatch, cfg.batch_size):
                ids = batch["input_ids"][rows].to(run.device)
                am = batch["attention_mask"][rows].to(run.device)
                part = float(mask[rows].sum()) if by_tokens else float(len(rows))
                logprobs = update_logprobs(roles, ids, am, P, cfg.temperature, live, rows)
                loss, stats = clipped_policy_loss(
                    logprobs, old["logprobs"][rows], advantages[rows], mask[rows],
                    clip_range=cfg.clip_range, clip_range_high=cfg.clip_range_high or None,
                    importance=importance, aggregation=cfg.loss_aggregation,
                    max_length=cfg.response_length,
                    ref_logprobs=old["ref_logprobs"][rows] if kl_coef else None, kl_coef=kl_coef)
                # sync_gradients divides by the world size: scale so the sum is the global mean
                session.backward(run, loss * (part * world / max(count, 1.0)))
                values = [v.item() for v in (loss, *(stats[k] for k in keys[1:]))]
                weight = part / max(local_count, 1.0)
                totals += weight * torch.tensor(values, dtype=torch.float64)
                minibatch_loss += part / max(count, 1.0) * values[0]
            params = trainable_params(roles)  # after the backward passes: see there
            sync_gradients(params, run)
            session.optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm, run=run,
                                   step=f"iteration {iteration}, update {updates + 1}",
                                   loss=minibatch_loss)
            on_step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: (totals[i] / updates).item() for i, k in enumerate(keys)}


@session.trainer
def train(cfg: GroupConfig, method: GroupMethod) -> dict:
    K = cfg.num_generations
    setup = open_run(cfg, method.name, critic=False,
                     note=f"; {cfg.rollout_batch_size} prompts x {K} completions per rollout")
    run, tokenizer, roles, reward, gold = (setup.run, setup.tokenizer, setup.roles, setup.reward,
                                           setup.gold)
    eval_prompts, iterations, stream = setup.eval_prompts, setup.iterations, setup.stream
    timers, role_bytes = setup.timers, setup.role_bytes
    optimizer, scheduler = session.build_optimization(
        cfg, roles.trainable, iterations * cfg.num_iterations * cfg.num_minibatches)
    start = session.maybe_resume(cfg, run, models=roles.checkpoint_models(), optimizer=optimizer,
                                 scheduler=scheduler, stream=stream)
    logger = session.open_logger(run, start)
    throughput = session.Throughput()

    def measure() -> None:  # once, while gradients and optimizer state both exist
        if not role_bytes:
            role_bytes.update(roles.tensor_bytes(optimizer))

    if start == 0:
        logger.log(0, evaluate(roles, tokenizer, eval_prompts, reward, gold, cfg))
    bar = session.progress_bar(run, total=iterations, initial=start, desc=method.name)
    record: dict = {}
    single = single_pass(cfg, passes=cfg.num_iterations, rows=cfg.rollout_batch_size * K)
    for it in range(start + 1, iterations + 1):
        seed = cfg.seed * 1_000_003 + it * 7919 + run.ctx.rank
        prompts = [e.prompt for e in stream.next_batch(cfg.rollout_batch_size)]
        rollout = collect_rollout(roles, reward, tokenizer, prompts, cfg, run, iteration=it,
                                  seed=seed, num_samples=K, single=single)
        batch, scores, parts, old, mask = (rollout.batch, rollout.scores, rollout.parts,
                                           rollout.old, rollout.mask)
        ended = batch["ended"]
        t_gen, t_score = rollout.seconds["generation"], rollout.seconds["scoring"]
        timers["generation"] += t_gen
        timers["scoring"] += t_score
        clock = time.perf_counter()
        advantages = method.advantages(cfg, scores, old, mask, run)
        t_fwd = rollout.seconds["forward"] + time.perf_counter() - clock
        timers["forward"] += t_fwd

        clock = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        update = group_update(roles, optimizer, scheduler, batch, old, advantages, cfg, method,
                              run, generator, measure, iteration=it, live=rollout.live)
        throughput.add(int(batch["attention_mask"].sum()) * cfg.num_iterations)
        timers["training"] += (t_train := time.perf_counter() - clock)

        groups = scores.view(-1, K)
        kl = kl_per_token(old["logprobs"], old["ref_logprobs"], method.kl_estimator)
        tokens = mask.sum().clamp(min=1)
        figures = {
            "reward": scores.mean(), "reward_std": scores.std(),
            "frac_reward_zero_std": (groups.std(-1) == 0).float().mean(),
            "kl": sequence_sum(kl, mask).sum() / tokens,
            "entropy": sequence_sum(old["entropy"], mask).sum() / tokens,
            "completions/mean_length": mask.sum(-1).float().mean(),
            "completions/clipped_ratio": (~ended).float().mean(),
            "advantages/std": advantages.std(),
            "rollout/sampler_logprob_gap": sampler_logprob_gap(batch, old["logprobs"]),
            **{f"rewards/{k}/mean": torch.tensor(v).mean() for k, v in parts.items()},
            **update,
        }
        figures = reduce_means({k: float(v) for k, v in figures.items()}, run)
        bar.update(1)
        record = {
            "loss": figures["loss/policy"], **figures, "lr": scheduler.get_last_lr()[0],
            "tokens_per_sec": throughput.rate() * run.ctx.world_size, "elapsed_s": run.elapsed(),
            "episode": it * cfg.rollout_batch_size * K * run.ctx.world_size,
            "time/generation": t_gen, "time/scoring": t_score, "time/forward": t_fwd,
            "time/training": t_train, "memory/peak_rss_bytes": memory.peak_rss_bytes(),
        }
        if cfg.eval_every and it % cfg.eval_every == 0 and it != iterations:
            record.update(evaluate(roles, tokenizer, eval_prompts, reward, gold, cfg))
        if it % cfg.log_every == 0 or it == iterations or "eval/kl" in record:
            logger.log(it, record)
        bar.set_postfix_str(format_metrics(record, ("reward", "kl", "eval/gold_reward")))
        session.step_boundary(run, it, iterations, models=roles.checkpoint_models,
                              optimizer=optimizer, scheduler=scheduler, stream=stream)
    bar.close()

    final_eval = evaluate(roles, tokenizer, eval_prompts, reward, gold, cfg)
    measure()
    return close_run(setup, cfg, logger=logger, throughput=throughput, final_eval=final_eval,
                     final_metrics={k: record[k] for k in ("reward", "kl", "entropy")
                                    if k in record},
                     extra={"num_generations": K, "single_pass": single})
