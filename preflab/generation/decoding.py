"""preflab's own decoding loop for a Hugging Face causal LM: one prefill forward, then one
forward of the rows' new tokens per step, against a KV cache that grows in place.

It feeds the model what transformers' ``generate`` feeds it for greedy steps (checked with a
forward hook on transformers 5.25, Llama, Qwen2, GPT-2 and GPT-NeoX alike): the prompt's ids,
its attention mask (none at all when no row is padded), position ids counted over the mask
(``logprobs.position_ids_from_attention_mask``: left padding starts each row at 0), the LM head
on the last position only (``logits_to_keep=1``), then each step's tokens with the mask grown
by a column of ones and the positions by one. A finished row is fed the pad token, as there,
and decoding stops when every row has ended or after ``max_new_tokens``. So the two give the
same logits and, with one ``pick`` per step, the same tokens (``tests/test_decoding.py``).

What it leaves out is generate's per-step overhead: its ``DynamicCache`` concatenates every
layer's keys and values each step (a copy of the whole cache), and preflab's greedy steps
through it paid for a [rows, vocabulary] score tensor and an argmax over it.

``fits(model)`` says whether the loop can drive a model (a transformers model, or one wrapped
with LoRA by PEFT). Where it cannot (an encoder-decoder, a model with its own
``prepare_inputs_for_generation``, a forward without position ids or a cache argument, a model
transformers gives no ``DynamicCache``, another PEFT method), ``preflab.generation`` calls
``model.generate`` as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from preflab.models.logprobs import position_ids_from_attention_mask

CACHE_ARGUMENTS = ("cache", "past_key_values")
"""The forward's name for the KV cache: ``cache`` on recent transformers 5.x, earlier
``past_key_values``."""


def _forward_parameters(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _driven(model):
    """The transformers model the loop calls: ``model``, or the one a PEFT LoRA wrapper holds
    (its LoRA layers sit inside it, so its forward is the wrapper's; PEFT's own ``generate``
    calls that model's ``generate`` the same way). Other PEFT methods (prompt learning) change
    the inputs, so the wrapper itself is returned and ``fits`` refuses it."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and config.peft_type == "LORA":
        return model.get_base_model()
    return model


def fits(model) -> bool:
    """Whether ``decode`` drives ``model`` as ``generate`` would. Anything unusual about how
    the model takes its inputs during generation means no: then ``generate`` it is."""
    model = _driven(model)
    params = _forward_parameters(model)
    return (
        isinstance(model, GenerationMixin)
        and not model.config.is_encoder_decoder
        and type(model).prepare_inputs_for_generation
        is GenerationMixin.prepare_inputs_for_generation
        and model._supports_default_dynamic_cache()
        and {"input_ids", "attention_mask", "position_ids", "use_cache"} <= params
        and any(name in params for name in CACHE_ARGUMENTS)
    )


class _InPlaceLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers allocated once, for the
    whole call: a step writes its new column in place instead of concatenating (a copy of the
    layer's whole cache, every step)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        rows, heads = key_states.shape[:2]
        self._keys = key_states.new_empty(rows, heads, self.capacity, key_states.shape[-1])
        self._values = value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1])
        self.keys, self.values = self._keys[:, :, :0], self._values[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def kv_cache(model, capacity: int) -> Cache:
    """The cache ``generate`` would make for ``model`` (``DynamicCache`` from its config), each
    plain full-attention layer swapped for one that grows in place up to ``capacity`` tokens;
    a layer of another kind (sliding window, linear attention) stays as transformers made it."""
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    if not cache.layers:  # transformers could not tell the layers apart: it adds them lazily
        return cache
    cache.layers = [_InPlaceLayer(capacity) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
           max_new_tokens: int, pad_id: int, eos_id: int | None,
           pick: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The new tokens of a left-padded batch, ``[B, steps]`` (``steps <= max_new_tokens``).

    ``pick`` takes each step's next-token logits ``[B, V]`` (float32) and returns a token per
    row ``[B]``; it is called once per step for every row, finished rows included (their token
    is then replaced by ``pad_id``), so it consumes random numbers as under ``generate``.
    Call it under ``torch.inference_mode()`` (or ``no_grad``).
    """
    model = _driven(model)
    rows, width = input_ids.shape
    params = _forward_parameters(model)
    cache_argument = next(name for name in CACHE_ARGUMENTS if name in params)
    cache = kv_cache(model, width + max_new_tokens)
    positions = position_ids_from_attention_mask(attention_mask)
    # generate drops a mask of all ones (no row is padded): the model then needs none
    mask = None
    if not bool(attention_mask.all()):
        mask = attention_mask.new_ones(rows, width + max_new_tokens)
        mask[:, :width] = attention_mask
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def forward(ids: torch.Tensor, position_ids: torch.Tensor, seen: int):
        if "cache_position" in params:  # older forwards index the cache with it
            extra["cache_position"] = torch.arange(seen, seen + ids.shape[1], device=ids.device)
        return model(input_ids=ids, position_ids=position_ids,
                     attention_mask=None if mask is None else mask[:, : seen + ids.shape[1]],
                     use_cache=True, return_dict=True, **{cache_argument: cache}, **extra)

    new_tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long,
                            device=input_ids.device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=input_ids.device)
    pad = torch.tensor(pad_id, device=input_ids.device)
    logits = forward(input_ids, positions, 0).logits[:, -1].float()
    positions = positions[:, -1:]
    for step in range(max_new_tokens):
        tokens = torch.where(unfinished, pick(logits), pad)
        new_tokens[:, step] = tokens
        if eos_id is not None:
            unfinished &= tokens != eos_id
        if step + 1 == max_new_tokens or not bool(unfinished.any()):
            break
        positions = positions + 1
        logits = forward(tokens[:, None], positions, width + step).logits[:, -1].float()
    return new_tokens[:, : step + 1]
