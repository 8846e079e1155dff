"""Evaluation by sampling: what a policy actually writes on held-out prompts, measured one way.

Every trainer's held-out evaluation (dpo, ppo), the built-in world's ``world score`` and
every run that ``preflab compare`` measures go through ``evaluate_policy``, so a figure means
the same thing wherever it appears. It samples with ``preflab.generation.generate`` and
reports, under the ecosystem's metric names:

    eval/<reward>        mean of each named reward function over the samples, e.g.
                         eval/gold_reward (an evaluation-only reward, never trained on) and
                         eval/proxy_reward (the reward a method trained on)
    eval/kl              sampled KL(pi || pi_ref): mean over samples of
                         sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]
    eval/mean_length     completion tokens per sample (EOS included)
    eval/eos_rate        fraction of samples that ended with EOS
    eval/distinct_n      distinct-n pooled over all samples, averaged over n = 1..5
    eval/<metric>/across_input, eval/<metric>/per_input
                         distinct-n, self-BLEU and (given the vocabulary size) EAD, across
                         prompts and, with several samples per prompt, within a prompt
                         (Kirk et al. 2024; ``preflab.metrics.diversity``)

With ``best_of=n`` and a ``proxy`` reward it measures best-of-n sampling instead of the policy
itself: each reported sample is the proxy's favourite of n fresh samples (the first on ties),
``eval/proxy_reward`` is the proxy's score of the picked ones, and ``eval/kl`` is
``log n - (n-1)/n``, an upper bound on the KL of best-of-n from the policy,
close to it when a prompt's samples rarely repeat (Stiennon et al. 2020; Beirami et al. 2024);
best-of-n has no density to take a sampled KL from.

A reward function is ``fn(prompts, completions, **kwargs) -> list[float]``; it receives
``ended_with_eos`` when it accepts it, so it can penalise unfinished text.

May import: errors, config, data, metrics, models, rewards, generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from preflab.config import TrainConfig, arg
from preflab.data import SFTExample, collate_sft
from preflab.data.chat import prompt_ids_for
from preflab.errors import ConfigError
from preflab.generation import Sample, generate
from preflab.metrics.best_of_n import kl_bound
from preflab.metrics.diversity import distinct_n, diversity_report
from preflab.models.logprobs import forward_logps
from preflab.rewards import RewardFn, check_reward_specs, score


@dataclass
class SampledEvalConfig(TrainConfig):
    """The flags of a trainer on fixed data (dpo, online-dpo, kto) that also samples its policy
    at evaluation: ``--eval-prompts``, ``--gold-reward`` and how to sample."""

    eval_prompts: str = arg(
        "", "Prompts to sample from at evaluation (eval/kl, eval/distinct_n, eval/gold_reward).",
        path="data",
    )
    gold_reward: str = arg(
        "", "Evaluation-only reward: module:function, file.py:function, a reward-model "
        "directory, or a weighted sum ('a:0.7,b:0.3'); logged as eval/gold_reward, never "
        "trained on. A function runs as Python code with your rights (file.py: that file), also "
        "when a shared --config names it: see docs/security.md."
    )
    eval_num_prompts: int = arg(64, "How many --eval-prompts to sample from at each evaluation.",
                                ge=1)
    eval_max_new_tokens: int = arg(48, "Longest sampled completion at evaluation.", ge=1)
    eval_temperature: float = arg(1.0, "Sampling temperature at evaluation (0: greedy).", ge=0)

    def validate(self) -> None:
        super().validate()
        if self.gold_reward and not self.eval_prompts:
            raise ConfigError("--gold-reward needs --eval-prompts to sample from",
                              field="gold_reward")
        if self.gold_reward:
            check_reward_specs(self.gold_reward, flag="--gold-reward")


@dataclass
class Evaluation:
    """The figures, the samples (``groups[i]`` = prompt i's), and each reward per sample."""

    metrics: dict[str, float]
    groups: list[list[Sample]]
    scores: dict[str, list[float]] = field(default_factory=dict)  # flat, prompt-major


def pick_best(groups: list[list[Sample]], proxy: list[float], n: int
              ) -> tuple[list[list[Sample]], list[float]]:
    """From each prompt's samples (``proxy`` flat, prompt-major), keep the proxy's favourite
    of each run of ``n`` consecutive ones (the first on ties), and its proxy score."""
    picked, picked_proxy, start = [], [], 0
    for group in groups:
        if len(group) % n:
            raise ValueError(f"{len(group)} samples of a prompt do not split into runs of {n}")
        kept = []
        for i in range(0, len(group), n):
            scores = proxy[start + i : start + i + n]
            best = max(range(n), key=lambda j: (scores[j], -j))
            kept.append(group[i + best])
            picked_proxy.append(scores[best])
        picked.append(kept)
        start += len(group)
    return picked, picked_proxy


@torch.no_grad()
def sample_logps(model, tokenizer, samples: Sequence[Sample], *, batch_size: int) -> torch.Tensor:
    """Summed log-probs of each sample's completion tokens under ``model``, shape [N]."""
    device = next(model.parameters()).device
    examples = []
    for s in samples:
        # the ids it was sampled from; else the prompt's own (a chat prompt's, not re-encoded)
        prompt_ids = list(s.prompt_ids) or prompt_ids_for(tokenizer, s.prompt)
        ids = prompt_ids + list(s.completion_ids)
        mask = [0] * len(prompt_ids) + [1] * len(s.completion_ids)
        examples.append(SFTExample(input_ids=ids, completion_mask=mask))
    out = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate_sft(examples[start : start + batch_size], tokenizer.pad_token_id)
            logps, _ = forward_logps(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["completion_mask"].to(device),
            )
            out.append(logps.sum.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def evaluate_policy(
    policy,
    tokenizer,
    prompts: Sequence[str],
    *,
    rewards: Mapping[str, RewardFn] | None = None,
    reference: Callable | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    logp_batch_size: int = 0,
    seed: int = 0,
    vocab_size: int | None = None,
    progress: bool = False,
    best_of: int = 1,
    proxy: RewardFn | None = None,
) -> Evaluation:
    """Sample ``num_samples`` completions per prompt and measure them (module docstring).

    ``rewards`` maps a name to a reward function, reported as ``eval/<name>``.
    ``reference(fn)`` calls ``fn(reference_model)`` (it may switch adapters off around the
    call); without it ``eval/kl`` is left out. ``batch_size`` is the generation batch,
    ``logp_batch_size`` (0: the same) that of the log-prob passes for ``eval/kl``.
    ``best_of`` > 1 with ``proxy`` measures best-of-n sampling from the policy (module
    docstring).
    """
    if best_of < 1 or (best_of > 1 and proxy is None):
        raise ValueError("best_of must be >= 1, and best_of > 1 needs a proxy reward")
    if not prompts:
        return Evaluation({}, [])
    groups = generate(policy, tokenizer, list(prompts), num_samples=num_samples * best_of,
                      max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      batch_size=batch_size, seed=seed, progress=progress)
    metrics: dict[str, float] = {}
    if best_of > 1:
        drawn = [s for group in groups for s in group]
        proxy_scores = score(proxy, [s.prompt for s in drawn], [s.completion for s in drawn],
                             ended_with_eos=[s.ended_with_eos for s in drawn])
        groups, picked_proxy = pick_best(groups, proxy_scores, best_of)
        metrics["eval/proxy_reward"] = sum(picked_proxy) / len(picked_proxy)
        metrics["eval/kl"] = kl_bound(best_of)
        reference = None
    samples = [s for group in groups for s in group]
    texts = [s.completion for s in samples]
    ended = [s.ended_with_eos for s in samples]
    n = len(samples)
    if reference is not None:
        # Before the rewards: a reward held as an adapter on the policy's own base (PPO's
        # shared memory mode) switches the active adapter when it scores.
        size = logp_batch_size or batch_size
        policy_logps = sample_logps(policy, tokenizer, samples, batch_size=size)
        ref_logps = reference(lambda m: sample_logps(m, tokenizer, samples, batch_size=size))
        metrics["eval/kl"] = (policy_logps - ref_logps).mean().item()
    scores: dict[str, list[float]] = {}
    for name, fn in (rewards or {}).items():
        scores[name] = score(fn, [s.prompt for s in samples], texts, ended_with_eos=ended)
        metrics[f"eval/{name}"] = sum(scores[name]) / n
    metrics["eval/mean_length"] = sum(len(s.completion_ids) for s in samples) / n
    metrics["eval/eos_rate"] = sum(ended) / n
    metrics["eval/distinct_n"] = float(distinct_n(texts))
    diversity = diversity_report([[s.completion for s in g] for g in groups], vocab_size)
    metrics.update({f"eval/{k}": float(v) for k, v in diversity.items()})
    return Evaluation(metrics, groups, scores)


@torch.no_grad()
def preference_accuracy(policy, reference, examples: Sequence, *, pad_token_id: int,
                        batch_size: int = 16) -> dict[str, float]:
    """How often the policy's implicit reward ranks held-out pairs as labelled.

    The implicit reward of a completion is ``log pi(y|x) - log pi_ref(y|x)`` (summed over its
    tokens; Rafailov et al. 2023): a policy "prefers" the side whose log-probability it raised
    more relative to the reference. A tie (the policy equal to its reference) counts one half.
    ``examples`` are ``PreferenceExample``s (``preflab.data.load_preference_dataset``).
    Returns ``eval/preference_accuracy`` and ``eval/implicit_margin`` (the mean difference).
    """
    from preflab.data import collate_preference
    from preflab.models.logprobs import concatenated_forward

    device = next(policy.parameters()).device
    wins, margin_sum = 0.0, 0.0
    for model in (policy, reference):
        model.eval()
    for start in range(0, len(examples), batch_size):
        batch = collate_preference(list(examples[start : start + batch_size]), pad_token_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        pc, pr = concatenated_forward(policy, batch)
        rc, rr = concatenated_forward(reference, batch)
        margin = (pc.sum - rc.sum) - (pr.sum - rr.sum)
        wins += float((margin > 0).sum()) + 0.5 * float((margin == 0).sum())
        margin_sum += float(margin.sum())
    n = max(len(examples), 1)
    return {"eval/preference_accuracy": wins / n, "eval/implicit_margin": margin_sum / n}
