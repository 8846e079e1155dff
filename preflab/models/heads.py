"""Scalar heads on a transformer body: a reward per sequence, a value per token.

A reward model and a value model are the same thing in two uses: a transformer body and a
linear head ``H -> 1`` on its last hidden states. The reward is the head's output at the
sequence's last real token (the end of the completion, EOS included, as the reward model was
trained); the value of the state before response token ``t`` is the head's output at the
position before ``t`` (Ziegler et al. 2019; Huang et al. 2024).

On disk a reward or value model is an ``AutoModelForSequenceClassification`` with
``num_labels=1``: the body is ``model.base_model`` and the head ``model.score``. preflab finds
the last real token from the attention mask rather than from the pad token id, so a tokenizer
whose pad token is its EOS scores the same as any other; with right padding and a pad token
distinct from EOS, Hugging Face's own pooled ``logits`` give the same number.
"""

from __future__ import annotations

import torch
from torch import Tensor

from preflab import models
from preflab.errors import ModelLoadError
from preflab.models.logprobs import position_ids_from_attention_mask


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of each row's last attended position, ``[B]`` (left, right or no padding)."""
    width = attention_mask.shape[1]
    flipped = attention_mask.to(torch.long).flip(-1)
    return width - 1 - flipped.argmax(-1)


def body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and the scalar head of a sequence-classification model.

    Works through DDP and PEFT wrappers; the head is ``score`` (Llama, Qwen2, GPT-2,
    GPT-NeoX, Mistral, ...) or ``classifier``.
    """
    inner = models.unwrap(model)
    if models.is_peft_model(inner):
        inner = inner.get_base_model()
    head = getattr(inner, "score", None) or getattr(inner, "classifier", None)
    if head is None:
        raise ModelLoadError(
            f"{type(inner).__name__} has no scalar head (expected a `score` or `classifier` "
            "module, as AutoModelForSequenceClassification models have)"
        )
    return inner.base_model, head


def head_outputs(body: torch.nn.Module, head: torch.nn.Module, input_ids: Tensor,
                 attention_mask: Tensor) -> Tensor:
    """The head applied at every position, ``[B, T]`` float32."""
    hidden = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return head(hidden).squeeze(-1).float()


def sequence_scores(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """A sequence-classification model's score at each row's last real token, ``[B]``."""
    body, head = body_and_head(model)
    return scores_at_last_token(body, head, input_ids, attention_mask)


def scores_at_last_token(body: torch.nn.Module, head: torch.nn.Module, input_ids: Tensor,
                         attention_mask: Tensor) -> Tensor:
    per_token = head_outputs(body, head, input_ids, attention_mask)
    index = last_token_index(attention_mask).unsqueeze(-1)
    return per_token.gather(-1, index).squeeze(-1)


def token_values(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """A sequence-classification model's head output at every position, ``[B, T]``."""
    body, head = body_and_head(model)
    return head_outputs(body, head, input_ids, attention_mask)


def new_scalar_head(hidden_size: int, *, dtype: torch.dtype, device: torch.device | str,
                    seed: int = 0) -> torch.nn.Linear:
    """A fresh ``H -> 1`` head, weights N(0, 1/(H+1)) (Huang et al. 2024), no bias."""
    head = torch.nn.Linear(hidden_size, 1, bias=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator)
                          / (hidden_size + 1) ** 0.5)
    return head.to(device=device, dtype=dtype)


class SequenceScorer(torch.nn.Module):
    """``forward(input_ids, attention_mask) -> [B]`` scores: a module to wrap in DDP, so the
    gradient hooks see the forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # a copy, not a view of the head's output: FSDP2 hooks the backward on what a sharded
        # module returns, and warns about views an in-place op could cut off
        return sequence_scores(self.model, input_ids, attention_mask).clone()


class TokenValues(torch.nn.Module):
    """``forward(input_ids, attention_mask) -> [B, T]`` values (``token_values``): the module
    that FSDP2 shards, so that its forward gathers the body's and the head's weights."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return token_values(self.model, input_ids, attention_mask).clone()  # see SequenceScorer
