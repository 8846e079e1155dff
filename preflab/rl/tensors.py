"""Sampled responses as tensors: the batch a policy-gradient method trains on.

``sample_rollout`` draws one response per prompt (or K: RLOO, GRPO) with ``preflab.generation.generate`` and
packs prompts and responses into the layout below; ``rollout_forward`` runs the no-grad
passes every policy-gradient method needs on that batch (the policy's and the reference's
log-probs of the sampled tokens, the value model's per-token values, the entropy).

Layout (as in Huang et al. 2024): each row is the prompt LEFT-padded to ``P`` tokens, then the
response RIGHT-padded to ``R`` tokens, so every response starts at column ``P``::

    input_ids       [B, P + R]   pad .. pad  prompt  response  pad .. pad
    attention_mask  [B, P + R]   0 on both paddings
    response_mask   [B, R]       1 on response tokens (the EOS included), 0 after

The logits at column ``P - 1 + t`` predict response token ``t``, and the value of the state
before token ``t`` is read at the same column (``response_slice``).

Implementation details this module holds (Huang et al. 2024, "The N+ implementation details
of RLHF with PPO"; Ziegler et al. 2019):

- Truncation at EOS: a response ends at its first EOS (kept, and scored); what a sampler
  wrote after it is dropped.
- Missing EOS: a response that ran to the length limit without EOS gets a fixed penalty
  score instead of the reward sources' score (``apply_missing_eos_penalty``).
- Per-token reward: ``r_t = -kl_coef * KL_t`` at every response token, with ``KL_t`` a
  per-token estimate of KL(pi || pi_ref) on the sampled token, plus the sequence's score
  added at its last token (``per_token_rewards``).
- Scoring what was sampled: the rollout's log-probs are recomputed in one no-cache pass under
  ``logits / temperature``, the distribution ``generate`` drew from (it applies no other
  processor, whatever the model's ``generation_config.json`` says). ``sampler_logprob_gap``
  measures the difference to the sampler's own record, so a drift can never hide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from preflab.data import pad_sequences
from preflab.generation import Sample, generate
from preflab.losses import kl_per_token, masked_var
from preflab.models.heads import last_token_index


def truncate_after_eos(ids: Sequence[int], eos_token_id: int | None) -> tuple[list[int], bool]:
    """``(ids up to and including the first EOS, whether there was one)``."""
    ids = list(ids)
    if eos_token_id is not None and eos_token_id in ids:
        return ids[: ids.index(eos_token_id) + 1], True
    return ids, False


def pack_rollout(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], *,
                 pad_token_id: int, eos_token_id: int | None) -> dict:
    """Prompt and response ids into the layout above; responses are truncated at EOS.

    Returns ``input_ids``, ``attention_mask``, ``response_mask`` (bool), ``ended`` (bool
    ``[B]``: the response has an EOS), ``response_ids`` (the truncated lists) and
    ``context_length`` ``P``.
    """
    cut = [truncate_after_eos(r, eos_token_id) for r in response_ids]
    responses = [ids for ids, _ in cut]
    if any(not r for r in responses):
        raise ValueError("every response needs at least one token")
    queries = pad_sequences(prompt_ids, pad_token_id, side="left")
    answers = pad_sequences(responses, pad_token_id, side="right")
    q_len = torch.tensor([len(p) for p in prompt_ids]).unsqueeze(1)
    r_len = torch.tensor([len(r) for r in responses]).unsqueeze(1)
    P, R = queries.shape[1], answers.shape[1]
    query_mask = torch.arange(P).unsqueeze(0) >= P - q_len
    response_mask = torch.arange(R).unsqueeze(0) < r_len
    return {
        "input_ids": torch.cat([queries, answers], dim=1),
        "attention_mask": torch.cat([query_mask, response_mask], dim=1).long(),
        "response_mask": response_mask,
        "ended": torch.tensor([e for _, e in cut], dtype=torch.bool),
        "response_ids": responses,
        "context_length": P,
    }


def response_slice(per_position: Tensor, context_length: int) -> Tensor:
    """Columns ``P-1 .. P+R-2`` of a ``[B, P+R, ...]`` tensor: the ones that predict (or
    value the state before) each response token, ``[B, R, ...]``."""
    return per_position[:, context_length - 1 : -1]


def apply_missing_eos_penalty(scores: Tensor, ended: Tensor, penalty: float | None) -> Tensor:
    """Scores with every response that has no EOS given ``penalty`` (None: unchanged)."""
    if penalty is None:
        return scores
    return torch.where(ended.to(scores.device), scores, torch.full_like(scores, penalty))


def per_token_rewards(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    scores: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """``(rewards [B, R], kl [B, R])``: ``-kl_coef * KL_t`` at every valid token, plus
    ``scores[b]`` at row ``b``'s last valid token; both 0 at padding."""
    mask = mask.to(torch.bool)
    kl = torch.where(mask, kl_per_token(logprobs, ref_logprobs, kl_estimator),
                     torch.zeros_like(logprobs))
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    last = last_token_index(mask)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, kl


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over the valid tokens (1 = perfect)."""
    var = masked_var(returns, mask)
    if var.item() == 0:
        return float("nan")
    return (1.0 - masked_var(returns - values, mask) / var).item()


def sequence_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Per-row sum over valid tokens, ``[B]``."""
    return torch.where(mask.to(torch.bool), x, torch.zeros_like(x)).sum(-1)



def micro_batches(rows: Tensor, size: int) -> list[Tensor]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def sample_rollout(policy, tokenizer, prompts: list[str], *, response_length: int,
                   temperature: float, batch_size: int, seed: int,
                   num_samples: int = 1) -> tuple[list[Sample], dict]:
    """``num_samples`` sampled responses per prompt (full softmax at ``temperature``), and the
    packed batch (``pack_rollout``) with the sampler's own log-probs as ``sampler_logprobs``
    ``[B, R]``. Rows are prompt-major: prompt ``i``'s ``k``-th response is row ``i * K + k``."""
    samples = [s for group in generate(
        policy, tokenizer, prompts, num_samples=num_samples, max_new_tokens=response_length,
        temperature=temperature, batch_size=batch_size, seed=seed) for s in group]
    batch = pack_rollout([s.prompt_ids for s in samples], [s.completion_ids for s in samples],
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    sampler = torch.zeros(batch["response_mask"].shape)
    for row, s in enumerate(samples):
        sampler[row, : len(s.logprobs)] = torch.tensor(s.logprobs)
    batch["sampler_logprobs"] = sampler
    return samples, batch


def sampler_logprob_gap(batch: dict, logprobs: Tensor) -> float:
    """Largest |sampler log-prob - recomputed log-prob| over the response tokens (nats)."""
    mask = batch["response_mask"].to(logprobs.device)
    gap = (batch["sampler_logprobs"].to(logprobs.device) - logprobs).abs()
    return float(torch.where(mask, gap, torch.zeros_like(gap)).max()) if mask.any() else 0.0


@torch.no_grad()
def rollout_forward(roles, batch: dict, *, batch_size: int, temperature: float,
                    device, reference_only: bool = False) -> dict[str, Tensor]:
    """``logprobs``, ``ref_logprobs``, ``values`` and ``entropy`` of the response tokens, ``[B, R]``.

    ``roles`` is any of ``preflab.rl.roles``; without a value role (``roles.has_value``
    false: RLOO, GRPO) there is no ``values``. ``reference_only``: just ``ref_logprobs``
    (the policy's and value's passes are the update's own: ``live_forward``).
    """
    P = batch["context_length"]
    out: dict[str, list] = {"ref_logprobs": []}
    if not reference_only:
        out.update(logprobs=[], entropy=[], **({"values": []} if roles.has_value else {}))
    for rows in micro_batches(torch.arange(len(batch["input_ids"])), batch_size):
        ids, mask = batch["input_ids"][rows].to(device), batch["attention_mask"][rows].to(device)
        # the heads run from the position before the response, on its tokens alone
        scored = batch["response_mask"][rows].to(device)
        if not reference_only:
            tokens = roles.policy_token_logps(ids, mask, keep_from=P - 1, scored=scored,
                                              temperature=temperature, entropy=True)
            out["logprobs"].append(tokens.logps)
            out["entropy"].append(tokens.entropy)
        out["ref_logprobs"].append(roles.reference_token_logps(
            ids, mask, keep_from=P - 1, scored=scored, temperature=temperature).logps)
        if "values" in out:
            out["values"].append(response_slice(roles.values(ids, mask), P))
    return {k: torch.cat(v) for k, v in out.items()}


def update_logprobs(roles, ids: Tensor, mask: Tensor, context_length: int, temperature: float,
                    live: dict | None, rows: Tensor) -> Tensor:
    """The policy's log-probs of the response tokens for an update, with gradients: ``live``'s
    ``rows`` in a single pass, else a forward pass whose head runs on the response's tokens
    (the attention mask's response part is the response mask)."""
    if live is not None:
        return live["logprobs"][rows]
    return roles.policy_token_logps(ids, mask, keep_from=context_length - 1,
                                    scored=mask[:, context_length:],
                                    temperature=temperature).logps


def live_forward(roles, batch: dict, *, temperature: float, device) -> dict[str, Tensor]:
    """The policy's (and value's) pass over the whole batch with gradients kept: ``logprobs``
    and ``values`` differentiable, ``entropy`` not, each ``[B, R]``.

    When the update is one epoch of one minibatch in one micro-batch, its pass sees the
    weights the rollout was sampled with, so ``rollout_forward``'s no-grad policy and value
    passes would compute the same numbers: their detached copies stand in for them, and the
    update backpropagates through these (``preflab ppo``'s single pass)."""
    P = batch["context_length"]
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    tokens = roles.policy_token_logps(ids, mask, keep_from=P - 1, scored=mask[:, P:],
                                      temperature=temperature, entropy=True)
    out = {"entropy": tokens.entropy, "logprobs": tokens.logps}
    if roles.has_value:
        out["values"] = response_slice(roles.values(ids, mask), P)
    return out
