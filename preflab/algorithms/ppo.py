"""PPO for language models: the RLHF road's last step, on prompt-only data.

    preflab ppo --model SFT --data PROMPTS --reward RM_DIR --output-dir RUN

One step is one PPO iteration (Ziegler et al. 2019; Huang et al. 2024, "The N+
implementation details of RLHF with PPO"), every detail below traceable to a line:

1. Rollout: ``--rollout-batch-size`` prompts; one response each, sampled by the policy in
   eval mode with the KV cache (``preflab.rollout.generate``; ``--temperature``, ``--top-p``,
   at most ``--response-length`` tokens). Responses end at their first EOS.
2. Scores: the reward sources (``--reward``: reward models, functions, a weighted sum) score
   the decoded text; a response without EOS gets ``--missing-eos-penalty`` instead.
3. One no-grad pass each: the policy's log-probs of its own tokens (under logits / temperature),
   the reference's, the value model's per-token values.
4. Per-token reward: ``-kl_coef * (log pi - log pi_ref)`` at every token, plus the score at the
   last token (``preflab.rl.rollouts.per_token_rewards``); optionally whitened.
5. GAE (``--gamma``, ``--gae-lambda``); advantages whitened over the batch's tokens.
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

import math
import time
from dataclasses import dataclass

import torch

from preflab import models
from preflab.config import TrainConfig, arg, parse_config
from preflab.data import TruncationPolicy, check_dataset, load_prompt_dataset, split_train_eval
from preflab.errors import ConfigError
from preflab.evaluation import evaluate_policy
from preflab.losses import KL_ESTIMATORS, gae, ppo_policy_loss, ppo_value_loss, whiten
from preflab.rewards import check_reward_specs, load_reward
from preflab.rl.kl_control import kl_controller
from preflab.rl.roles import MEMORY_MODES, build_roles
from preflab.rl.tensors import (
    apply_missing_eos_penalty,
    explained_variance,
    micro_batches,
    per_token_rewards,
    response_logps,
    response_slice,
    rollout_forward,
    sample_rollout,
    sampler_logprob_gap,
    sequence_sum,
)
from preflab.runtime import distributed, memory, session
from preflab.runtime.metrics import format_metrics
from preflab.runtime.stream import ExampleStream


@dataclass
class PPOConfig(TrainConfig):
    """``preflab ppo``: the shared flags (``--batch-size`` = micro-batch of every forward) and PPO's."""

    learning_rate: float = arg(1e-5, "Peak learning rate of AdamW (policy and value).", gt=0)
    lr_scheduler: str = arg("linear", "Learning-rate schedule after warm-up (over all updates).",
                            choices=("cosine", "linear", "constant"))
    log_every: int = arg(1, "Log every N iterations (each is one rollout and its updates).", ge=1)
    reward: str = arg("", "Reward source(s): a reward-model directory (or run directory), "
                      "module:function or file.py:function; a weighted sum as "
                      "'rm_dir:0.7,mod:fn:0.3'. Each part is logged as objective/scores/<name>. "
                      "A function runs as Python code with your rights (file.py: that file), "
                      "also when a shared --config names it: see docs/security.md.")
    gold_reward: str = arg("", "Evaluation-only reward (same forms, and a function runs as code "
                           "the same way); logged as eval/gold_reward, never trained on.")
    ref_model: str = arg("", "Reference model (default: --model).", path="model")
    value_model: str = arg("", "Where the value model starts (default: the first reward model, "
                           "else --model).", path="model")
    memory_mode: str = arg("classic", "classic: four models; shared: one frozen base with "
                           "policy, value and reward adapters.", choices=MEMORY_MODES)
    kl_coef: float = arg(0.05, "kl_coef: weight of the per-token KL penalty (initial value "
                         "with --adaptive-kl).", ge=0)
    adaptive_kl: bool = arg(False, "Adapt kl_coef toward --target-kl (Ziegler et al. 2019).")
    target_kl: float = arg(6.0, "Target KL per response (nats) for --adaptive-kl.", gt=0)
    kl_horizon: int = arg(10000, "Horizon of the adaptive KL controller, in responses.", ge=1)
    kl_estimator: str = arg("k1", "Per-token KL estimator in the reward.", choices=KL_ESTIMATORS)
    gamma: float = arg(1.0, "Discount gamma of GAE.", ge=0, le=1)
    gae_lambda: float = arg(0.95, "lambda of GAE.", ge=0, le=1)
    clip_range: float = arg(0.2, "Policy ratio clip range epsilon.", gt=0)
    clip_range_value: float = arg(0.2, "Value clip range around the rollout-time values.", gt=0)
    vf_coef: float = arg(0.1, "Weight of the value loss.", ge=0)
    ppo_epochs: int = arg(4, "Passes over each rollout batch.", ge=1)
    num_minibatches: int = arg(2, "Minibatches per pass (one optimizer step each).", ge=1)
    rollout_batch_size: int = arg(64, "Prompts per rollout (per process).", ge=1)
    response_length: int = arg(48, "Longest response in tokens.", ge=1)
    temperature: float = arg(1.0, "Sampling temperature (log-probs use logits / temperature).",
                             gt=0)
    top_p: float = arg(1.0, "Nucleus sampling threshold. PPO trains only on the full softmax "
                       "(1.0): its ratio and KL score each token under logits / temperature.",
                       gt=0, le=1)
    missing_eos_penalty: float = arg(-1.0, "Score of a response that hit --response-length "
                                     "without EOS.", finite=True)
    penalize_missing_eos: bool = arg(True, "Replace the score of responses without EOS by "
                                     "--missing-eos-penalty.")
    whiten_rewards: bool = arg(False, "Whiten the per-token rewards (scale only) before GAE.")
    generation_batch_size: int = arg(0, "Prompts per generate() call; 0 = the whole rollout.",
                                     ge=0)
    eval_prompts: str = arg("", "Prompts to sample from at evaluation (default: --eval-data, "
                            "else --eval-fraction of --data).", path="data")
    eval_num_prompts: int = arg(64, "How many evaluation prompts to sample from.", ge=1)
    eval_max_new_tokens: int = arg(0, "Longest sampled completion at evaluation "
                                   "(0: --response-length).", ge=0)
    eval_temperature: float = arg(1.0, "Sampling temperature at evaluation (0: greedy).", ge=0)

    def validate(self) -> None:
        super().validate()
        if not self.reward:
            raise ConfigError("--reward is required", field="reward",
                              expected="a reward-model directory or module:function")
        check_reward_specs(self.reward, flag="--reward")
        if self.gold_reward:
            check_reward_specs(self.gold_reward, flag="--gold-reward")
        if self.grad_accum != 1:
            raise ConfigError("ppo splits each minibatch into micro-batches of --batch-size "
                              "itself; --grad-accum must stay 1", field="grad_accum")
        if self.rollout_batch_size % self.num_minibatches:
            raise ConfigError("--rollout-batch-size must be a multiple of --num-minibatches",
                              field="num_minibatches")
        if self.top_p != 1.0:
            raise ConfigError(
                "--top-p below 1 is refused for PPO training: the policy ratio, the KL penalty "
                "and the value targets score each sampled token under the full softmax at "
                "--temperature, so nucleus sampling would train on tokens drawn from another "
                "distribution (about 0.10 nats per token off at 0.9, 0.36 at 0.7). Sample with "
                "--top-p 1.0; use --temperature to sharpen", field="top_p", expected="1.0")
        if self.memory_mode == "shared":
            if self.lora_rank < 1:
                raise ConfigError("--memory-mode shared holds the policy as a LoRA adapter: "
                                  "give --lora-rank N", field="lora_rank")
            if self.ref_model and self.ref_model != self.model:
                raise ConfigError("--memory-mode shared: the reference is the base with "
                                  "adapters off, so --ref-model must be --model or empty",
                                  field="ref_model")


class RunState:
    """What a checkpoint needs beyond weights and optimizer: the prompt stream, the KL coef."""

    def __init__(self, stream: ExampleStream, kl_ctl) -> None:
        self.stream, self.kl_ctl = stream, kl_ctl

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "kl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.kl_ctl.load_state_dict(state["kl"])


def load_prompts(cfg: PPOConfig, tokenizer):
    policy = TruncationPolicy(max_length=cfg.max_length,
                              max_prompt_length=cfg.max_prompt_length or None, overlong=cfg.overlong)
    examples, report = load_prompt_dataset(cfg.data, tokenizer, policy)
    held_out = cfg.eval_prompts or cfg.eval_data
    if held_out:
        eval_examples, _ = load_prompt_dataset(held_out, tokenizer, policy)
    else:
        examples, eval_examples = split_train_eval(examples, cfg.eval_fraction, cfg.seed)
    return examples, [e.prompt for e in eval_examples][: cfg.eval_num_prompts], report


def sync_gradients(params: list[torch.nn.Parameter], run: session.Run) -> None:
    """Average gradients over processes (every rank updates on its own rollouts)."""
    if not run.ctx.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= run.ctx.world_size


def ppo_update(roles, optimizer, scheduler, batch, old, advantages, returns, cfg: PPOConfig,
               run: session.Run, generator: torch.Generator, on_step, *,
               iteration: int = 0) -> dict[str, float]:
    """``--ppo-epochs`` passes over shuffled minibatches; returns the mean update statistics.

    Each minibatch's loss and gradient norm are checked before its optimizer step
    (``session.optimizer_step``): a non-finite one stops the run, or is skipped."""
    P, mask = batch["context_length"], batch["response_mask"].to(run.device)
    params = [p for p in roles.trainable.parameters() if p.requires_grad]
    n_rows = len(mask)
    size = n_rows // cfg.num_minibatches
    keys = ("loss/policy", "loss/value", "policy/approxkl", "policy/clipfrac", "val/clipfrac",
            "val/ratio")
    totals, updates = torch.zeros(len(keys), dtype=torch.float64), 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n_rows, generator=generator)
        for start in range(0, n_rows, size):
            minibatch = order[start : start + size]
            tokens = mask[minibatch].sum().clamp(min=1)
            minibatch_loss = torch.zeros((), dtype=torch.float64)
            for rows in micro_batches(minibatch, cfg.batch_size):
                ids = batch["input_ids"][rows].to(run.device)
                am = batch["attention_mask"][rows].to(run.device)
                m, share = mask[rows], (mask[rows].sum() / tokens).item()
                new_logprobs = response_logps(roles.policy_logits(ids, am), ids, P, cfg.temperature)
                pg_loss, pg = ppo_policy_loss(new_logprobs, old["logprobs"][rows], advantages[rows],
                                              m, clip_range=cfg.clip_range)
                (pg_loss * share).backward()  # before the value pass: adapters may switch
                values = response_slice(roles.values(ids, am), P)
                vf_loss, vf = ppo_value_loss(values, old["values"][rows], returns[rows], m,
                                             clip_range_value=cfg.clip_range_value)
                (cfg.vf_coef * vf_loss * share).backward()
                stats = (pg_loss, vf_loss, pg["approxkl"], pg["clipfrac"], vf["clipfrac"], pg["ratio"])
                values_now = [s.item() for s in stats]  # one host sync for all six
                totals += share * torch.tensor(values_now, dtype=torch.float64)
                minibatch_loss += share * (values_now[0] + cfg.vf_coef * values_now[1])
            sync_gradients(params, run)
            session.optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm, run=run,
                                   step=f"iteration {iteration}, update {updates + 1}",
                                   loss=minibatch_loss)
            on_step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
    return {k: (totals[i] / updates).item() for i, k in enumerate(keys)}


def evaluate(roles, tokenizer, prompts, reward, gold, cfg: PPOConfig) -> dict[str, float]:
    """``eval/*`` on the held-out prompts (``preflab.evaluation``): one sample per prompt,
    ``eval/proxy_reward`` the training reward (no EOS penalty), ``eval/gold_reward`` the
    evaluation-only one, ``eval/kl`` to the reference."""
    rewards = {"proxy_reward": lambda p, c, **kw: reward(p, c, **kw)[0]}
    if gold is not None:
        rewards["gold_reward"] = lambda p, c, **kw: gold(p, c, **kw)[0]
    return evaluate_policy(
        roles.generator(), tokenizer, prompts, rewards=rewards, reference=roles.with_reference,
        temperature=cfg.eval_temperature, max_new_tokens=cfg.eval_max_new_tokens or cfg.response_length,
        batch_size=cfg.generation_batch_size or max(len(prompts), 1),
        logp_batch_size=cfg.eval_batch_size or cfg.batch_size, seed=cfg.seed + 1).metrics


def train(cfg: PPOConfig) -> dict:
    for source in (cfg.data, cfg.eval_prompts or cfg.eval_data):
        check_dataset(source, "prompt")
    run = session.start_run(cfg, "ppo")
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples, eval_prompts, data_report = load_prompts(cfg, tokenizer)
    if run.ctx.is_main:
        print(f"data: {len(examples)} train / {len(eval_prompts)} eval prompts; "
              f"{data_report.summary()}", flush=True)
    roles, reward = build_roles(cfg, run, tokenizer)
    gold = (load_reward(cfg.gold_reward, flag="--gold-reward", device=run.device, dtype=run.dtype)
            if cfg.gold_reward else None)
    iterations = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(
        cfg.num_epochs * len(examples) / (cfg.rollout_batch_size * run.ctx.world_size)))
    roles.restore_grads()
    optimizer, scheduler = session.build_optimization(
        cfg, roles.trainable, iterations * cfg.ppo_epochs * cfg.num_minibatches)
    stream = ExampleStream(examples, seed=cfg.seed, rank=run.ctx.rank, world_size=run.ctx.world_size)
    kl_ctl = kl_controller(cfg.kl_coef, adaptive=cfg.adaptive_kl, target=cfg.target_kl,
                           horizon=cfg.kl_horizon)
    state = RunState(stream, kl_ctl)
    start = session.maybe_resume(cfg, run, models=roles.checkpoint_models(), optimizer=optimizer,
                                 scheduler=scheduler, stream=state)
    logger = session.open_logger(run, start)
    throughput = session.Throughput()
    timers = dict.fromkeys(("generation", "scoring", "forward", "training"), 0.0)
    role_bytes: dict = {}

    def measure() -> None:  # once, while gradients and optimizer state both exist
        if not role_bytes:
            role_bytes.update(roles.tensor_bytes(optimizer))

    if start == 0:
        logger.log(0, evaluate(roles, tokenizer, eval_prompts, reward, gold, cfg))
    bar = session.progress_bar(run, total=iterations, initial=start, desc="ppo")
    state_dict = dict(optimizer=optimizer, scheduler=scheduler, stream=state)
    record: dict = {}
    for it in range(start + 1, iterations + 1):
        seed = cfg.seed * 1_000_003 + it * 7919 + run.ctx.rank
        clock = time.perf_counter()
        prompts = [e.prompt for e in stream.next_batch(cfg.rollout_batch_size)]
        with session.diverged_at(run, f"iteration {it} (sampling the rollout)"):
            samples, batch = sample_rollout(
                roles.generator(), tokenizer, prompts, response_length=cfg.response_length,
                temperature=cfg.temperature, batch_size=cfg.generation_batch_size or len(prompts),
                seed=seed)
        timers["generation"] += (t_gen := time.perf_counter() - clock)

        clock = time.perf_counter()
        ended = batch["ended"]
        with session.diverged_at(run, f"iteration {it} (scoring the rollout)"):
            total, parts = reward(prompts, [s.completion for s in samples],
                                  ended_with_eos=ended.tolist())
            session.require_finite(run, f"iteration {it}", reward=total)
        scores = apply_missing_eos_penalty(torch.tensor(total, device=run.device), ended,
                                           cfg.missing_eos_penalty if cfg.penalize_missing_eos else None)
        timers["scoring"] += (t_score := time.perf_counter() - clock)

        clock = time.perf_counter()
        old = rollout_forward(roles, batch, batch_size=cfg.batch_size, temperature=cfg.temperature,
                              device=run.device)
        mask = batch["response_mask"].to(run.device)
        rewards, kl = per_token_rewards(old["logprobs"], old["ref_logprobs"], scores, mask,
                                        kl_coef=kl_ctl.value, kl_estimator=cfg.kl_estimator)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, old["values"], mask, gamma=cfg.gamma,
                                  gae_lambda=cfg.gae_lambda)
        advantages = whiten(advantages, mask)
        timers["forward"] += (t_fwd := time.perf_counter() - clock)

        clock = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        update = ppo_update(roles, optimizer, scheduler, batch, old, advantages, returns, cfg, run,
                            generator, measure, iteration=it)
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
        figures = reduce_means({k: float(v) for k, v in figures.items()}, run)
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
    if run.ctx.is_main:  # before final_model(), which drops the value adapter in shared mode
        roles.save_value(run.dir / "final" / "value", tokenizer)
    summary = session.finish_run(
        run, logger=logger, final_log=final_eval, model=roles.final_model(), tokenizer=tokenizer, steps=iterations,
        tokens=throughput.tokens * run.ctx.world_size, roles=role_bytes,
        final_metrics={**{k: v for k, v in record.items() if k.startswith("objective/")},
                       **final_eval},
        data_report=data_report.as_dict(),
        extra={"memory_mode": cfg.memory_mode, "reward_components": reward.names,
               "time_s": {k: round(v, 3) for k, v in timers.items()}},
    )
    if run.ctx.is_main:
        print(f"ppo: {iterations} iterations in {summary['wall_s']:.1f}s "
              f"(generation {timers['generation']:.1f}s, scoring {timers['scoring']:.1f}s, "
              f"training {timers['forward'] + timers['training']:.1f}s); "
              f"{format_metrics(final_eval, ('eval/proxy_reward', 'eval/gold_reward', 'eval/kl'))}; "
              f"policy in {run.dir / 'final'}", flush=True)
    distributed.teardown(run.ctx)
    return summary


def reduce_means(values: dict[str, float], run: session.Run) -> dict[str, float]:
    """Each figure averaged over processes (``val/num_eos_tokens`` summed)."""
    if not run.ctx.enabled:
        return values
    keys = sorted(values)
    totals = distributed.all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64),
                                        run.ctx)
    return {k: totals[i].item() / (1 if k == "val/num_eos_tokens" else run.ctx.world_size)
            for i, k in enumerate(keys)}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PPOConfig, argv, prog="preflab ppo", description=__doc__)
    session.run_command(train, cfg)
    return 0
