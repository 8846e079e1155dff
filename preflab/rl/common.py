"""What every on-policy method on prompts shares (``ppo``, ``rloo``, ``grpo``,
``reinforce-pp``) below its loop (``preflab.rl.loop``): the rollout flags, the prompt data,
opening and closing a run, collecting a scored rollout, the held-out evaluation, the
cross-process averages, and the figures of a KL-penalised per-token reward.

``RolloutConfig`` holds the flags of the roles, the reward sources, sampling and evaluation;
each method's config adds its own (PPO's value and GAE flags, RLOO's and GRPO's group flags).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from preflab import models
from preflab.config import TrainConfig, arg, fsdp_arg
from preflab.data import TruncationPolicy, check_dataset, load_prompt_dataset, split_train_eval
from preflab.errors import ConfigError
from preflab.evaluation import evaluate_policy
from preflab.losses import ppo_policy_loss, whiten
from preflab.rewards import check_reward_specs, load_reward
from preflab.rl.roles import MEMORY_MODES, build_roles
from preflab.rl.tensors import (
    apply_missing_eos_penalty,
    live_forward,
    rollout_forward,
    sample_rollout,
    sampler_logprob_gap,
    sequence_sum,
)
from preflab.runtime import distributed
from preflab.runtime.metrics import format_metrics
from preflab.runtime.stream import ExampleStream
from preflab.training import session


@dataclass
class RolloutConfig(TrainConfig):
    """The flags of an on-policy trainer on prompts (``--batch-size`` = micro-batch of every
    forward)."""

    learning_rate: float = arg(1e-5, "Peak learning rate of AdamW.", gt=0)
    lr_scheduler: str = arg("linear", "Learning-rate schedule after warm-up (over all updates).",
                            choices=("cosine", "linear", "constant"))
    log_every: int = arg(1, "Log every N iterations (each is one rollout and its updates).", ge=1)
    reward: str = arg("", "Reward source(s): a reward-model directory (or run directory), "
                      "module:function or file.py:function; a weighted sum as "
                      "'rm_dir:0.7,mod:fn:0.3'. Each part is logged as its own metric. "
                      "A function runs as Python code with your rights (file.py: that file), "
                      "also when a shared --config names it: see docs/security.md.")
    gold_reward: str = arg("", "Evaluation-only reward (same forms, and a function runs as code "
                           "the same way); logged as eval/gold_reward, never trained on.")
    ref_model: str = arg("", "Reference model (default: --model).", path="model")
    memory_mode: str = arg("classic", "classic: a separate model per role; shared: one frozen "
                           "base with the roles as adapters.", choices=MEMORY_MODES)
    kl_coef: float = arg(0.05, "kl_coef: weight of the KL penalty.", ge=0)
    clip_range: float = arg(0.2, "Policy ratio clip range epsilon.", gt=0)
    num_minibatches: int = arg(2, "Minibatches per pass over a rollout (one optimizer step "
                               "each).", ge=1)
    rollout_batch_size: int = arg(64, "Prompts per rollout (per process).", ge=1)
    response_length: int = arg(48, "Longest response in tokens.", ge=1)
    temperature: float = arg(1.0, "Sampling temperature (log-probs use logits / temperature).",
                             gt=0)
    top_p: float = arg(1.0, "Nucleus sampling threshold. Training takes only the full softmax "
                       "(1.0): the ratio and the KL score each token under logits / "
                       "temperature.", gt=0, le=1)
    missing_eos_penalty: float = arg(-1.0, "Score of a response that hit --response-length "
                                     "without EOS.", finite=True)
    penalize_missing_eos: bool = arg(True, "Replace the score of responses without EOS by "
                                     "--missing-eos-penalty.")
    generation_batch_size: int = arg(0, "Prompts per generate() call; 0 = the whole rollout.",
                                     ge=0)
    eval_prompts: str = arg("", "Prompts to sample from at evaluation (default: --eval-data, "
                            "else --eval-fraction of --data).", path="data")
    eval_num_prompts: int = arg(64, "How many evaluation prompts to sample from.", ge=1)
    eval_max_new_tokens: int = arg(0, "Longest sampled completion at evaluation "
                                   "(0: --response-length).", ge=0)
    eval_temperature: float = arg(1.0, "Sampling temperature at evaluation (0: greedy).", ge=0)
    fsdp: bool = fsdp_arg("policy", "; ppo shards its value model too (--memory-mode "
                          "classic). The reference and reward models stay whole on each "
                          "process, and every process samples in lockstep")

    def validate(self) -> None:
        super().validate()
        if self.fsdp and self.memory_mode == "shared":
            raise ConfigError("--fsdp shards whole models; --memory-mode shared trains LoRA "
                              "adapters, small enough to replicate (leave out --fsdp)",
                              field="fsdp")
        if not self.reward:
            raise ConfigError("--reward is required", field="reward",
                              expected="a reward-model directory or module:function")
        check_reward_specs(self.reward, flag="--reward")
        if self.gold_reward:
            check_reward_specs(self.gold_reward, flag="--gold-reward")
        if self.grad_accum != 1:
            raise ConfigError("this trainer splits each minibatch into micro-batches of "
                              "--batch-size itself; --grad-accum must stay 1", field="grad_accum")
        if self.top_p != 1.0:
            raise ConfigError(
                "--top-p below 1 is refused for training on prompts: the policy ratio and the "
                "KL score each sampled token under the full softmax at --temperature, so "
                "nucleus sampling would train on tokens drawn from another distribution "
                "(about 0.10 nats per token off at 0.9, 0.36 at 0.7). Sample with --top-p 1.0; "
                "use --temperature to sharpen", field="top_p", expected="1.0")
        if self.memory_mode == "shared":
            if self.lora_rank < 1:
                raise ConfigError("--memory-mode shared holds the policy as a LoRA adapter: "
                                  "give --lora-rank N", field="lora_rank")
            if self.ref_model and self.ref_model != self.model:
                raise ConfigError("--memory-mode shared: the reference is the base with "
                                  "adapters off, so --ref-model must be --model or empty",
                                  field="ref_model")


def held_out_prompts(cfg: RolloutConfig) -> tuple[str, dict]:
    """The evaluation prompts' source and its split: --eval-prompts (read whole), else the
    held-out data (``TrainConfig.eval_source``)."""
    return (cfg.eval_prompts, {}) if cfg.eval_prompts else cfg.eval_source()


def load_prompts(cfg: RolloutConfig, tokenizer):
    """``(train examples, evaluation prompts, data report)``."""
    policy = TruncationPolicy(max_length=cfg.max_length,
                              max_prompt_length=cfg.max_prompt_length or None, overlong=cfg.overlong)
    examples, report = load_prompt_dataset(cfg.data, tokenizer, policy, **cfg.data_source())
    held_out, source = held_out_prompts(cfg)
    if held_out:
        eval_examples, _ = load_prompt_dataset(held_out, tokenizer, policy, **source)
    else:
        examples, eval_examples = split_train_eval(examples, cfg.eval_fraction, cfg.seed)
    return examples, [e.prompt for e in eval_examples][: cfg.eval_num_prompts], report


def trainable_params(roles) -> list[torch.nn.Parameter]:
    """The parameters an update steps. Read them after the backward passes: a sharded model
    (``--fsdp``) then holds its shards, while between a forward pass and its backward FSDP2's
    root module holds the gathered weights in their place."""
    return [p for p in roles.trainable.parameters() if p.requires_grad]


def sync_gradients(params: list[torch.nn.Parameter], run: session.Run) -> None:
    """Average gradients over processes (every rank updates on its own rollouts). A sharded
    parameter's gradient (``--fsdp``) is already the average: FSDP2 reduce-scatters it in
    the backward pass."""
    if not run.ctx.enabled:
        return
    for p in params:
        if distributed.is_dtensor(p):
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= run.ctx.world_size


def sampled_figures(roles, tokenizer, prompts, reward, gold,
                    cfg: RolloutConfig) -> dict[str, float]:
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


def reduce_means(values: dict[str, float], run: session.Run, *,
                 sums: tuple[str, ...] = ()) -> dict[str, float]:
    """Each figure averaged over processes (those named in ``sums`` summed)."""
    if not run.ctx.enabled:
        return values
    keys = sorted(values)
    totals = distributed.all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64),
                                        run.ctx)
    return {k: totals[i].item() / (1 if k in sums else run.ctx.world_size)
            for i, k in enumerate(keys)}


def _global_mean_var(values: torch.Tensor, run: session.Run) -> tuple[float, float]:
    """Mean and Bessel-corrected variance of ``values`` over every process's (one collective)."""
    values = values.double()
    n, total, squares = global_sums([values.numel(), float(values.sum()),
                                     float((values**2).sum())], run)
    mean = total / max(n, 1.0)
    return mean, max(squares - n * mean * mean, 0.0) / max(n - 1, 1.0)


def global_moments(x: torch.Tensor, run: session.Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Bessel-corrected std of ``x`` over every process's values."""
    if not run.ctx.enabled:
        return x.mean(), x.std()
    mean, var = _global_mean_var(x, run)
    return torch.tensor(mean, dtype=x.dtype), torch.tensor(math.sqrt(var), dtype=x.dtype)


def global_whiten(x: torch.Tensor, mask: torch.Tensor, run: session.Run, *,
                  shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``losses.whiten`` with the mean and (Bessel-corrected) variance of the masked values
    of every process, so N processes whiten as one process holding all of them would."""
    if not run.ctx.enabled:
        return whiten(x, mask, shift_mean=shift_mean, eps=eps)
    m = mask.to(torch.bool)
    mean, var = _global_mean_var(x[m], run)
    out = (x - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=x.dtype, device=x.device))
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out))


def global_sums(values: list[float], run: session.Run) -> list[float]:
    """``values`` summed over processes (unchanged in one process)."""
    if not run.ctx.enabled:
        return list(values)
    return distributed.all_reduce_sum(torch.tensor(values, dtype=torch.float64),
                                      run.ctx).tolist()


@dataclass
class Rollout:
    """One iteration's sampled batch, scored, with its no-grad passes (``rl.tensors``)."""

    samples: list
    batch: dict
    scores: torch.Tensor
    """``[B]`` after the missing-EOS penalty."""
    parts: dict
    """Each reward source's raw scores, by name."""
    old: dict
    """``logprobs``, ``ref_logprobs``, ``entropy`` (and ``values`` with a value role), ``[B, R]``."""
    mask: torch.Tensor
    seconds: dict
    """``generation``, ``scoring``, ``forward``."""
    live: dict | None = None
    """In a single pass: the update's differentiable passes (``rl.tensors.live_forward``),
    whose detached copies are in ``old``."""


def single_pass(cfg: RolloutConfig, *, passes: int, rows: int) -> bool:
    """Whether the update is one pass (``passes``) of one minibatch in one micro-batch over a
    rollout of ``rows`` responses. Its forward pass then runs at the weights that sampled, and
    stands in for the rollout's no-grad policy (and value) passes: the same update, with
    fewer forward passes."""
    return passes == 1 and cfg.num_minibatches == 1 and rows <= cfg.batch_size


def collect_rollout(roles, reward, tokenizer, prompts: list[str], cfg: RolloutConfig,
                    run: session.Run, *, iteration: int, seed: int,
                    num_samples: int = 1, single: bool = False) -> Rollout:
    """Sample ``num_samples`` responses per prompt (prompt-major rows), score them (a NaN
    score, or sampling from NaN probabilities, stops the run naming the iteration), apply
    the missing-EOS penalty, and run the no-grad passes. ``single`` (``single_pass``): the
    reference's alone without gradients, the policy's and value's as the update's own
    (``Rollout.live``), their detached copies in ``old``."""
    clock = time.perf_counter()
    with session.diverged_at(run, f"iteration {iteration} (sampling the rollout)"):
        samples, batch = sample_rollout(
            roles.generator(), tokenizer, prompts, response_length=cfg.response_length,
            temperature=cfg.temperature, num_samples=num_samples,
            batch_size=(cfg.generation_batch_size or len(prompts)) * num_samples, seed=seed)
    t_gen = time.perf_counter() - clock

    clock = time.perf_counter()
    ended = batch["ended"]
    with session.diverged_at(run, f"iteration {iteration} (scoring the rollout)"):
        total, parts = reward([p for p in prompts for _ in range(num_samples)],
                              [s.completion for s in samples], ended_with_eos=ended.tolist())
        session.require_finite(run, f"iteration {iteration}", reward=total)
    scores = apply_missing_eos_penalty(torch.tensor(total, device=run.device), ended,
                                       cfg.missing_eos_penalty if cfg.penalize_missing_eos else None)
    t_score = time.perf_counter() - clock

    clock = time.perf_counter()
    old = rollout_forward(roles, batch, batch_size=cfg.batch_size, temperature=cfg.temperature,
                          device=run.device, reference_only=single)
    live = None
    if single:  # kept for the update's backward; the detached copies stand in as old
        live = live_forward(roles, batch, temperature=cfg.temperature, device=run.device)
        old.update({k: v.detach() for k, v in live.items()})
    return Rollout(samples, batch, scores, parts, old, batch["response_mask"].to(run.device),
                   {"generation": t_gen, "scoring": t_score,
                    "forward": time.perf_counter() - clock}, live)


def token_policy_loss(cfg: RolloutConfig, logprobs: torch.Tensor, old: dict, targets: dict,
                      rows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate with an advantage per token (``losses.ppo_policy_loss``,
    ``--clip-range``), a mean over the tokens (PPO, REINFORCE++); TRL's PPOTrainer names."""
    loss, pg = ppo_policy_loss(logprobs, old["logprobs"][rows], targets["advantages"][rows], mask,
                               clip_range=cfg.clip_range)
    return loss, {"policy/approxkl": pg["approxkl"], "policy/clipfrac": pg["clipfrac"],
                  "val/ratio": pg["ratio"]}


def kl_reward_figures(rollout: Rollout, kl: torch.Tensor, kl_coef: float, run: session.Run,
                      **extra: torch.Tensor) -> dict[str, float]:
    """The figures of a method whose per-token reward holds ``-kl_coef * kl`` (PPO,
    REINFORCE++), by the names of TRL's PPOTrainer, with ``extra`` among them: averaged over
    processes, ``val/num_eos_tokens`` summed. ``kl``: ``[B, R]``, 0 at padding."""
    scores, mask, old = rollout.scores, rollout.mask, rollout.old
    seq_kl = sequence_sum(kl, mask)
    non_score = -kl_coef * seq_kl
    figures = {
        "objective/kl": seq_kl.mean(),
        "objective/entropy": sequence_sum(old["entropy"], mask).mean(),
        "objective/non_score_reward": non_score.mean(), "objective/scores": scores.mean(),
        "objective/rlhf_reward": (scores + non_score).mean(),
        "objective/response_length": mask.sum(-1).float().mean(),
        "val/num_eos_tokens": rollout.batch["ended"].float().sum(), **extra,
        "rollout/sampler_logprob_gap": sampler_logprob_gap(rollout.batch, old["logprobs"]),
        **{f"objective/scores/{k}": torch.tensor(v).mean() for k, v in rollout.parts.items()},
    }
    return reduce_means({k: float(v) for k, v in figures.items()}, run,
                        sums=("val/num_eos_tokens",))


@dataclass
class Setup:
    """What a trainer on prompts has before its first iteration (``open_run``)."""

    run: session.Run
    tokenizer: object
    examples: list
    eval_prompts: list[str]
    data_report: object
    roles: object
    reward: object
    gold: object
    iterations: int
    stream: ExampleStream
    timers: dict
    role_bytes: dict


def open_run(cfg: RolloutConfig, command: str, *, critic: bool, note: str = "") -> Setup:
    """Check the prompt files, start the run, load the tokenizer, prompts, roles, training and
    gold rewards; ``iterations`` from ``--max-steps`` or ``--num-epochs``. ``note`` is added
    to the printed data line."""
    check_dataset(cfg.data, "prompt", **cfg.data_source(), split_flag="--data-split")
    held_out, source = held_out_prompts(cfg)
    check_dataset(held_out, "prompt", **source,
                  split_flag=None if cfg.eval_prompts else "--eval-data-split")
    run = session.start_run(cfg, command)
    session.check_fsdp(cfg, run)
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples, eval_prompts, data_report = load_prompts(cfg, tokenizer)
    if run.ctx.is_main:
        print(f"data: {len(examples)} train / {len(eval_prompts)} eval prompts; "
              f"{data_report.summary()}{note}", flush=True)
    roles, reward = build_roles(cfg, run, tokenizer, critic=critic)
    gold = (load_reward(cfg.gold_reward, flag="--gold-reward", device=run.device,
                        dtype=run.precision.frozen) if cfg.gold_reward else None)
    iterations = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(
        cfg.num_epochs * len(examples) / (cfg.rollout_batch_size * run.ctx.world_size)))
    roles.restore_grads()
    stream = ExampleStream(examples, seed=cfg.seed, rank=run.ctx.rank, world_size=run.ctx.world_size)
    return Setup(run, tokenizer, examples, eval_prompts, data_report, roles, reward, gold,
                 iterations, stream,
                 timers=dict.fromkeys(("generation", "scoring", "forward", "training"), 0.0),
                 role_bytes={})


def close_run(s: Setup, cfg: RolloutConfig, *, logger, throughput, final_eval: dict,
              final_metrics: dict, extra: dict) -> dict:
    """Write ``final/`` and ``summary.json`` (``session.finish_run``), print the one-line
    summary, and leave the process group."""
    run, timers = s.run, s.timers
    summary = session.finish_run(
        run, logger=logger, final_log=final_eval, model=s.roles.final_model(),
        tokenizer=s.tokenizer, steps=s.iterations, tokens=throughput.tokens * run.ctx.world_size,
        roles=s.role_bytes, final_metrics={**final_metrics, **final_eval},
        data_report=s.data_report.as_dict(),
        extra={"memory_mode": cfg.memory_mode, "reward_components": s.reward.names, **extra,
               "time_s": {k: round(v, 3) for k, v in timers.items()}},
    )
    if run.ctx.is_main:
        print(f"{run.command}: {s.iterations} iterations in {summary['wall_s']:.1f}s "
              f"(generation {timers['generation']:.1f}s, scoring {timers['scoring']:.1f}s, "
              f"training {timers['forward'] + timers['training']:.1f}s); "
              f"{format_metrics(final_eval, ('eval/proxy_reward', 'eval/gold_reward', 'eval/kl'))}; "
              f"policy in {run.dir / 'final'}", flush=True)
    distributed.teardown(run.ctx)
    return summary
