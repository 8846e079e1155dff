"""Sampling from the policy for online RL: rollouts as tensors, their no-grad passes, evaluation.

``sample_rollout`` draws one response per prompt with ``preflab.rollout.generate`` (eval mode,
KV cache, seeded) and packs prompts and responses into the layout of
``preflab.rl.rollouts``. ``rollout_forward`` runs the no-grad passes every policy-gradient
method needs on that batch: the policy's and the reference's log-probs of the sampled tokens
and the value model's per-token values. ``evaluate_policy`` samples on held-out prompts and
reports the ``eval/*`` figures. The roles object is any of ``preflab.rl.roles``.
"""

from __future__ import annotations

import torch

from preflab.evaluation import sample_logps
from preflab.metrics.diversity import distinct_n
from preflab.rl.rollouts import pack_rollout, response_entropy, response_logps, response_slice
from preflab.rollout import Sample, generate


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A prompt's ids exactly as ``generate`` encodes them (BOS alone for an empty prompt)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"]) or [tokenizer.bos_token_id]


def micro_batches(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def sample_rollout(policy, tokenizer, prompts: list[str], *, response_length: int,
                   temperature: float, top_p: float, batch_size: int,
                   seed: int) -> tuple[list[Sample], dict]:
    """One sampled response per prompt, and the packed batch (``pack_rollout``)."""
    samples = [group[0] for group in generate(
        policy, tokenizer, prompts, max_new_tokens=response_length, temperature=temperature,
        top_p=top_p, batch_size=batch_size, seed=seed)]
    batch = pack_rollout([encode_prompt(tokenizer, p) for p in prompts],
                         [s.completion_ids for s in samples],
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return samples, batch


@torch.no_grad()
def rollout_forward(roles, batch: dict, *, batch_size: int, temperature: float,
                    device) -> dict[str, torch.Tensor]:
    """``logprobs``, ``ref_logprobs``, ``values`` and ``entropy`` of the response tokens, ``[B, R]``."""
    P = batch["context_length"]
    out: dict[str, list] = {"logprobs": [], "ref_logprobs": [], "values": [], "entropy": []}
    for rows in micro_batches(torch.arange(len(batch["input_ids"])), batch_size):
        ids, mask = batch["input_ids"][rows].to(device), batch["attention_mask"][rows].to(device)
        logits = roles.policy_logits(ids, mask)
        out["logprobs"].append(response_logps(logits, ids, P, temperature))
        out["entropy"].append(response_entropy(logits, P, temperature))
        del logits
        ref_logits = roles.reference_logits(ids, mask)
        out["ref_logprobs"].append(response_logps(ref_logits, ids, P, temperature))
        del ref_logits
        out["values"].append(response_slice(roles.values(ids, mask), P))
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def evaluate_policy(roles, tokenizer, prompts: list[str], reward, gold=None, *,
                    max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                    seed: int, generation_batch_size: int = 0) -> dict[str, float]:
    """One sample per held-out prompt, under the ecosystem's names:

    ``eval/proxy_reward`` (the training reward, no EOS penalty), ``eval/gold_reward`` (the
    evaluation-only reward, when given), ``eval/kl`` (mean over samples of the summed
    log-ratio policy/reference, as ``preflab.evaluation`` measures it for every method),
    ``eval/mean_length``, ``eval/eos_rate``, ``eval/distinct_n``. ``reward`` and ``gold``
    return ``(total, parts)`` (``preflab.rewards.CombinedReward``). ``batch_size`` is the
    micro-batch of the log-prob passes; ``generation_batch_size`` (0: all prompts at once)
    that of sampling.
    """
    if not prompts:
        return {}
    samples = [g[0] for g in generate(
        roles.generator(), tokenizer, prompts, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, batch_size=generation_batch_size or len(prompts),
        seed=seed)]
    texts = [s.completion for s in samples]
    ended = [s.ended_with_eos for s in samples]
    n = len(samples)
    out = {
        "eval/proxy_reward": sum(reward(prompts, texts, ended_with_eos=ended)[0]) / n,
        "eval/mean_length": sum(len(s.completion_ids) for s in samples) / n,
        "eval/eos_rate": sum(ended) / n,
        "eval/distinct_n": float(distinct_n(texts)),
    }
    if gold is not None:
        out["eval/gold_reward"] = sum(gold(prompts, texts, ended_with_eos=ended)[0]) / n
    policy_logps = sample_logps(roles.generator(), tokenizer, samples, batch_size=batch_size)
    ref_logps = roles.with_reference(
        lambda m: sample_logps(m, tokenizer, samples, batch_size=batch_size))
    out["eval/kl"] = (policy_logps - ref_logps).mean().item()
    return out
