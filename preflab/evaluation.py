"""Evaluation by sampling: what a policy actually writes on held-out prompts.

``sample_and_score`` draws completions for held-out prompts and reports, under the
ecosystem's metric names:

    eval/gold_reward     mean of an evaluation-only reward function (never trained on)
    eval/kl              sampled KL(pi || pi_ref): mean over samples of
                         sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]
    eval/distinct_n      distinct-n across samples, averaged over n = 1..5
    eval/mean_length     completion tokens per sample
    eval/eos_rate        fraction of samples that ended with EOS

Any reward function (``fn(prompts, completions, **kwargs)``) can be the gold reward; it
receives ``ended_with_eos`` as a keyword so it can penalise unfinished text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from preflab.data import SFTExample, collate_sft
from preflab.logprobs import SequenceLogps, forward_logps
from preflab.rewards import RewardFn, score
from preflab.rollout import Sample, generate


@torch.no_grad()
def sample_logps(model, tokenizer, samples: Sequence[Sample], *, batch_size: int) -> torch.Tensor:
    """Summed log-probs of each sample's completion tokens under ``model``, shape [N]."""
    device = next(model.parameters()).device
    examples = []
    for s in samples:
        prompt_ids = list(tokenizer(s.prompt, add_special_tokens=True)["input_ids"])
        ids = prompt_ids + list(s.completion_ids)
        mask = [0] * len(prompt_ids) + [1] * len(s.completion_ids)
        examples.append(SFTExample(input_ids=ids, completion_mask=mask))
    out = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate_sft(examples[start : start + batch_size], tokenizer.pad_token_id)
            logps: SequenceLogps = forward_logps(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["completion_mask"].to(device),
            )[0]
            out.append(logps.sum.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def sample_and_score(
    policy,
    tokenizer,
    prompts: Sequence[str],
    *,
    gold_reward: RewardFn | None = None,
    run_reference: Callable | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Sample on ``prompts`` and return the eval/* figures that can be computed.

    ``run_reference(fn)`` calls ``fn(reference_model)`` (it may switch adapters off around
    the call); without it ``eval/kl`` is left out.
    """
    from preflab.metrics.diversity import distinct_n

    groups = generate(
        policy, tokenizer, list(prompts), num_samples=num_samples, max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size, seed=seed,
    )
    samples = [s for group in groups for s in group]
    completions = [s.completion for s in samples]
    out: dict[str, float] = {
        "eval/mean_length": sum(len(s.completion_ids) for s in samples) / max(len(samples), 1),
        "eval/eos_rate": sum(s.ended_with_eos for s in samples) / max(len(samples), 1),
        "eval/distinct_n": float(distinct_n(completions)),
    }
    if gold_reward is not None:
        values = score(gold_reward, [s.prompt for s in samples], completions,
                       ended_with_eos=[s.ended_with_eos for s in samples])
        out["eval/gold_reward"] = sum(values) / max(len(values), 1)
    if run_reference is not None:
        policy_logps = sample_logps(policy, tokenizer, samples, batch_size=batch_size)
        ref_logps = run_reference(lambda m: sample_logps(m, tokenizer, samples, batch_size=batch_size))
        out["eval/kl"] = (policy_logps - ref_logps).mean().item()
    return out
