"""PPO for language models: the RLHF road's last step, on prompt-only data.

    preflab ppo --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

One step is one PPO iteration (Ziegler et al. 2019; Huang et al. 2024, "The N+
implementation details of RLHF with PPO"), every detail below traceable to a line:

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

import time
from dataclasses import dataclass

import torch

from preflab.algorithms import Compared, Method
from preflab.config import arg, parse_config
from preflab.errors import ConfigError
from preflab.losses import KL_ESTIMATORS, gae, ppo_policy_loss, ppo_value_loss
from preflab.rl.common import (
    RolloutConfig,
    close_run,
    collect_rollout,
    evaluate,
    global_sums,
    global_whiten,
    open_run,
    reduce_means,
    single_pass,
    sync_gradients,
    trainable_params,
)
from preflab.rl.kl_control import kl_controller
from preflab.rl.roles import MEMORY_MODES
from preflab.rl.tensors import (
    explained_variance,
    micro_batches,
    per_token_rewards,
    response_slice,
    sampler_logprob_gap,
    sequence_sum,
    update_logprobs,
)
from preflab.runtime import memory
from preflab.runtime.metrics import format_metrics
from preflab.runtime.stream import ExampleStream
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


class RunState:
    """What a checkpoint needs beyond weights and optimizer: the prompt stream, the KL coef."""

    def __init__(self, stream: ExampleStream, kl_ctl) -> None:
        self.stream, self.kl_ctl = stream, kl_ctl

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "kl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.kl_ctl.load_state_dict(state["kl"])


def ppo_update(roles, optimizer, scheduler, batch, old, advantages, returns, cfg: PPOConfig,
               run: session.Run, generator: torch.Generator, on_step, *,
               iteration: int = 0, live: dict | None = None) -> dict[str, float]:
    """``--ppo-epochs`` passes over shuffled minibatches; returns the mean update statistics.

    ``live``: the differentiable ``logprobs`` and ``values`` of the whole batch in a single
    pass (``rl.common.single_pass``), used instead of a new forward pass.
    Each minibatch's loss and gradient norm are checked before its optimizer step
    (``session.optimizer_step``): a non-finite one stops the run, or is skipped."""
    P, mask = batch["context_length"], batch["response_mask"].to(run.device)
    n_rows = len(mask)
    size = n_rows // cfg.num_minibatches
    keys = ("loss/policy", "loss/value", "policy/approxkl", "policy/clipfrac", "val/clipfrac",
            "val/ratio")
    totals, updates = torch.zeros(len(keys), dtype=torch.float64), 0
    world = run.ctx.world_size
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n_rows, generator=generator)
        minibatches = [order[s : s + size] for s in range(0, n_rows, size)]
        local = [float(mask[mb].sum()) for mb in minibatches]
        counts = global_sums(local, run)  # the minibatch's tokens on every process: one collective
        for minibatch, local_tokens, tokens in zip(minibatches, local, counts):
            minibatch_loss = torch.zeros((), dtype=torch.float64)
            for rows in micro_batches(minibatch, cfg.batch_size):
                ids = batch["input_ids"][rows].to(run.device)
                am = batch["attention_mask"][rows].to(run.device)
                m, part = mask[rows], float(mask[rows].sum())
                # sync_gradients averages over processes: weigh by the global token count, so
                # N processes make the update of one holding every rollout
                share = part * world / max(tokens, 1.0)
                new_logprobs = update_logprobs(roles, ids, am, P, cfg.temperature, live, rows)
                pg_loss, pg = ppo_policy_loss(new_logprobs, old["logprobs"][rows], advantages[rows],
                                              m, clip_range=cfg.clip_range)
                session.backward(run, pg_loss * share)  # before the value pass: adapters may switch
                values = (live["values"][rows] if live is not None else
                          response_slice(roles.values(ids, am), P))
                vf_loss, vf = ppo_value_loss(values, old["values"][rows], returns[rows], m,
                                             clip_range_value=cfg.clip_range_value)
                session.backward(run, cfg.vf_coef * vf_loss * share)
                stats = (pg_loss, vf_loss, pg["approxkl"], pg["clipfrac"], vf["clipfrac"], pg["ratio"])
                values_now = [s.item() for s in stats]  # one host sync for all six
                totals += part / max(local_tokens, 1.0) * torch.tensor(values_now,
                                                                       dtype=torch.float64)
                minibatch_loss += share * (values_now[0] + cfg.vf_coef * values_now[1])
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
def train(cfg: PPOConfig) -> dict:
    setup = open_run(cfg, "ppo", critic=True)
    run, tokenizer, roles, reward, gold = (setup.run, setup.tokenizer, setup.roles, setup.reward,
                                           setup.gold)
    eval_prompts, iterations, stream = setup.eval_prompts, setup.iterations, setup.stream
    timers, role_bytes = setup.timers, setup.role_bytes
    optimizer, scheduler = session.build_optimization(
        cfg, roles.trainable, iterations * cfg.ppo_epochs * cfg.num_minibatches)
    kl_ctl = kl_controller(cfg.kl_coef, adaptive=cfg.adaptive_kl, target=cfg.target_kl,
                           horizon=cfg.kl_horizon)
    state = RunState(stream, kl_ctl)
    start = session.maybe_resume(cfg, run, models=roles.checkpoint_models(), optimizer=optimizer,
                                 scheduler=scheduler, stream=state)
    logger = session.open_logger(run, start)
    throughput = session.Throughput()

    def measure() -> None:  # once, while gradients and optimizer state both exist
        if not role_bytes:
            role_bytes.update(roles.tensor_bytes(optimizer))

    if start == 0:
        logger.log(0, evaluate(roles, tokenizer, eval_prompts, reward, gold, cfg))
    bar = session.progress_bar(run, total=iterations, initial=start, desc="ppo")
    state_dict = dict(optimizer=optimizer, scheduler=scheduler, stream=state)
    record: dict = {}
    single = single_pass(cfg, passes=cfg.ppo_epochs, rows=cfg.rollout_batch_size)
    for it in range(start + 1, iterations + 1):
        seed = cfg.seed * 1_000_003 + it * 7919 + run.ctx.rank
        prompts = [e.prompt for e in stream.next_batch(cfg.rollout_batch_size)]
        rollout = collect_rollout(roles, reward, tokenizer, prompts, cfg, run, iteration=it,
                                  seed=seed, single=single)
        batch, scores, parts, old, mask = (rollout.batch, rollout.scores, rollout.parts,
                                           rollout.old, rollout.mask)
        ended = batch["ended"]
        t_gen, t_score = rollout.seconds["generation"], rollout.seconds["scoring"]
        timers["generation"] += t_gen
        timers["scoring"] += t_score
        clock = time.perf_counter()
        rewards, kl = per_token_rewards(old["logprobs"], old["ref_logprobs"], scores, mask,
                                        kl_coef=kl_ctl.value, kl_estimator=cfg.kl_estimator)
        if cfg.whiten_rewards:
            rewards = global_whiten(rewards, mask, run, shift_mean=False)
        advantages, returns = gae(rewards, old["values"], mask, gamma=cfg.gamma,
                                  gae_lambda=cfg.gae_lambda)
        advantages = global_whiten(advantages, mask, run)
        t_fwd = rollout.seconds["forward"] + time.perf_counter() - clock
        timers["forward"] += t_fwd

        clock = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        update = ppo_update(roles, optimizer, scheduler, batch, old, advantages, returns, cfg, run,
                            generator, measure, iteration=it, live=rollout.live)
        throughput.add(int(batch["attention_mask"].sum()) * cfg.ppo_epochs)
        timers["training"] += (t_train := time.perf_counter() - clock)

        seq_kl = sequence_sum(kl, mask)
        non_score = -kl_ctl.value * seq_kl
        figures = {
            "objective/kl": seq_kl.mean(), "objective/entropy": sequence_sum(old["entropy"], mask).mean(),
            "objective/non_score_reward": non_score.mean(), "objective/scores": scores.mean(),
            "objective/rlhf_reward": (scores + non_score).mean(),
            "objective/response_length": mask.sum(-1).float().mean(),
            "val/num_eos_tokens": ended.float().sum(),
            "val/explained_variance": torch.tensor(explained_variance(old["values"], returns, mask)),
            "rollout/sampler_logprob_gap": sampler_logprob_gap(batch, old["logprobs"]),
            **{f"objective/scores/{k}": torch.tensor(v).mean() for k, v in parts.items()},
        }
        figures = reduce_means({k: float(v) for k, v in figures.items()}, run,
                               sums=("val/num_eos_tokens",))
        kl_coef_used = kl_ctl.value
        kl_ctl.update(figures["objective/kl"], cfg.rollout_batch_size * run.ctx.world_size)
        bar.update(1)

        record = {
            "loss": update["loss/policy"] + cfg.vf_coef * update["loss/value"], **update, **figures,
            "objective/kl_coef": kl_coef_used, "lr": scheduler.get_last_lr()[0],
            "tokens_per_sec": throughput.rate() * run.ctx.world_size, "elapsed_s": run.elapsed(),
            "episode": it * cfg.rollout_batch_size * run.ctx.world_size,
            "time/generation": t_gen, "time/scoring": t_score, "time/forward": t_fwd,
            "time/training": t_train, "memory/peak_rss_bytes": memory.peak_rss_bytes(),
        }
        if cfg.eval_every and it % cfg.eval_every == 0 and it != iterations:
            record.update(evaluate(roles, tokenizer, eval_prompts, reward, gold, cfg))
        if it % cfg.log_every == 0 or it == iterations or "eval/kl" in record:
            logger.log(it, record)
        bar.set_postfix_str(format_metrics(record, ("objective/scores", "objective/kl",
                                                    "eval/gold_reward")))
        session.step_boundary(run, it, iterations, models=roles.checkpoint_models, **state_dict)
    bar.close()

    final_eval = evaluate(roles, tokenizer, eval_prompts, reward, gold, cfg)
    measure()
    # before final_model(), which drops the value adapter in shared mode
    roles.save_value(run.dir / "final" / "value", tokenizer, run)
    return close_run(setup, cfg, logger=logger, throughput=throughput, final_eval=final_eval,
                     final_metrics={k: v for k, v in record.items() if k.startswith("objective/")},
                     extra={"single_pass": single})


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
