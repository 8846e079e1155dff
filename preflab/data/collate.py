"""Batch examples into padded tensors, in the layouts the training loops expect.

Training batches are right-padded: the real tokens start at position 0, so the shift-by-one
log-prob gather lines up the same way in every row, and padding carries attention 0 and
completion mask 0. Generation batches are left-padded, so every row's next token is appended
at the same (last) position. ``pad_token_id`` comes from the caller (usually the tokenizer's
pad token, or EOS for a tokenizer without one); what it is does not matter beyond the
attention mask, since masked positions never reach a loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from preflab.data.tokenize import PreferenceExample, PromptExample, SFTExample, UnpairedExample


def pad_sequences(seqs: Sequence[Sequence[int]], pad_value: int, *,
                  side: str = "right") -> torch.Tensor:
    """Stack ``seqs`` into a LongTensor ``[B, T]`` (T = longest), padding on ``side``."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            values = torch.as_tensor(list(seq), dtype=torch.long)
            if side == "right":
                out[row, : len(seq)] = values
            else:
                out[row, width - len(seq):] = values
    return out


def _attention(lengths: Sequence[int], width: int, *, side: str = "right") -> torch.Tensor:
    positions = torch.arange(width).unsqueeze(0)
    lengths_t = torch.as_tensor(list(lengths), dtype=torch.long).unsqueeze(1)
    if side == "right":
        return (positions < lengths_t).long()
    return (positions >= width - lengths_t).long()


def _completion_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                      pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion rows, mask 1 on the completion tokens only."""
    input_ids = pad_sequences([[*p, *c] for p, c in zip(prompts, completions)], pad_token_id)
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)]
    return {
        "input_ids": input_ids,
        "attention_mask": _attention([len(m) for m in masks], input_ids.shape[1]),
        "completion_mask": pad_sequences(masks, 0),
    }


def collate_sft(examples: Sequence[SFTExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``completion_mask``: each ``[B, T]``, right-padded."""
    input_ids = pad_sequences([e.input_ids for e in examples], pad_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": _attention([len(e.input_ids) for e in examples], input_ids.shape[1]),
        "completion_mask": pad_sequences([e.completion_mask for e in examples], 0),
    }


def collate_preference(examples: Sequence[PreferenceExample],
                       pad_token_id: int) -> dict[str, torch.Tensor | int]:
    """The concatenated layout for one forward pass over chosen and rejected.

    Rows ``0..B-1`` are prompt+chosen and rows ``B..2B-1`` prompt+rejected (row ``i`` and
    ``B + i`` share a prompt), all padded to one ``T``: ``input_ids``, ``attention_mask``,
    ``completion_mask`` are ``[2B, T]``; ``batch_size`` is ``B``.
    """
    prompts = [e.prompt_ids for e in examples] * 2
    completions = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    batch: dict[str, torch.Tensor | int] = dict(
        _completion_batch(prompts, completions, pad_token_id))
    batch["batch_size"] = len(examples)
    return batch


def collate_unpaired(examples: Sequence[UnpairedExample],
                     pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompt+completion rows ``[B, T]`` (mask on the completion) and ``labels`` bool ``[B]``."""
    batch = _completion_batch([e.prompt_ids for e in examples],
                              [e.completion_ids for e in examples], pad_token_id)
    batch["labels"] = torch.tensor([bool(e.label) for e in examples], dtype=torch.bool)
    return batch


def collate_prompts(examples: Sequence[PromptExample],
                    pad_token_id: int) -> dict[str, torch.Tensor | list[str]]:
    """LEFT-padded ``input_ids`` and ``attention_mask`` ``[B, T]`` for generation; ``prompts``."""
    input_ids = pad_sequences([e.prompt_ids for e in examples], pad_token_id, side="left")
    return {
        "input_ids": input_ids,
        "attention_mask": _attention([len(e.prompt_ids) for e in examples], input_ids.shape[1],
                                     side="left"),
        "prompts": [e.prompt for e in examples],
    }
