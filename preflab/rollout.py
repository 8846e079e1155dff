"""Sampling completions from any Hugging Face causal LM, reproducibly, in left-padded batches.

``generate`` runs the model in eval mode under ``torch.inference_mode`` with the KV cache,
pads each batch on the LEFT (the attention mask hides the pads and the model's position ids
follow the mask), and stops each row at EOS. Prompts are tokenized as the data layer does it
(``tokenizer(prompt, add_special_tokens=True)``), so a policy sees its prompts the way it was
trained on them.

Each ``Sample`` holds:

- ``completion``: the text the completion adds to the prompt, decoded without special tokens:
  the decoding of prompt + completion minus the decoding of the prompt, so ``prompt +
  completion`` reads as one text (for a word-level tokenizer it starts with a space, as
  completions do in the ecosystem's data formats). Where the tokenizer does not decode the
  prompt back to a prefix of the whole, the completion tokens are decoded alone.
- ``completion_ids``: the sampled token ids, the final EOS included when there is one, no
  padding: exactly the actions a policy-gradient method scores.
- ``ended_with_eos``: whether the row stopped on EOS rather than on ``max_new_tokens``.

Reproducibility: the sampler draws from torch's global generator, seeded with ``seed`` inside
``torch.random.fork_rng`` so the caller's RNG state is left as it was. The same model,
prompts and arguments give the same samples; a different ``batch_size`` gives different (but
equally distributed) samples, since rows share the generator's stream. Greedy decoding
(``temperature=0``) does not depend on batching.
"""

from __future__ import annotations

from dataclasses import dataclass

from preflab.errors import ConfigError, DataError


@dataclass
class Sample:
    prompt: str
    completion: str
    completion_ids: list[int]
    ended_with_eos: bool


def _validate(num_samples: int, max_new_tokens: int, temperature: float, top_p: float,
              batch_size: int) -> None:
    checks = [
        (num_samples >= 1, "num_samples", "an integer >= 1"),
        (max_new_tokens >= 1, "max_new_tokens", "an integer >= 1"),
        (temperature >= 0, "temperature", "a number >= 0 (0 = greedy)"),
        (0 < top_p <= 1, "top_p", "a number in (0, 1]"),
        (batch_size >= 1, "batch_size", "an integer >= 1"),
    ]
    for ok, name, expected in checks:
        if not ok:
            raise ConfigError("invalid generation setting", field=name, expected=expected)


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> list[list[Sample]]:
    """Sample ``num_samples`` completions for each prompt; ``result[i][j]`` is prompt i's j-th.

    ``temperature=0`` is greedy decoding (then ``num_samples`` copies are identical).
    """
    import torch
    from transformers import GenerationConfig

    _validate(num_samples, max_new_tokens, temperature, top_p, batch_size)
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0
    encoded = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            if tokenizer.bos_token_id is None:
                raise DataError(f"prompt {i} is empty after tokenization and the tokenizer "
                                "has no BOS token to start from", expected="a non-empty prompt")
            encoded[i] = [tokenizer.bos_token_id]
    prompt_texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded]

    sampling = temperature > 0
    gen_config = GenerationConfig(
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,  # no top-k truncation: sample the full distribution
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    jobs = [(i, j) for i in range(len(prompts)) for j in range(num_samples)]
    batches = [jobs[k : k + batch_size] for k in range(0, len(jobs), batch_size)]
    device = next(model.parameters()).device
    results: list[list[Sample | None]] = [[None] * num_samples for _ in prompts]

    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            iterator = batches
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(batches, desc="sampling", unit="batch")
            for batch in iterator:
                rows = [encoded[i] for i, _ in batch]
                width = max(len(r) for r in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, ids in enumerate(rows):
                    input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[r, width - len(ids) :] = 1
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=gen_config,
                )
                new_tokens = output[:, width:].tolist()
                for (i, j), ids in zip(batch, new_tokens):
                    results[i][j] = _make_sample(
                        tokenizer, prompts[i], encoded[i], prompt_texts[i], ids, eos_id
                    )
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _make_sample(tokenizer, prompt: str, prompt_ids: list[int], prompt_text: str,
                 new_ids: list[int], eos_id: int | None) -> Sample:
    ended = eos_id is not None and eos_id in new_ids
    ids = new_ids[: new_ids.index(eos_id) + 1] if ended else list(new_ids)
    body = ids[:-1] if ended else ids
    full_text = tokenizer.decode(prompt_ids + body, skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        completion = full_text[len(prompt_text) :]
    else:
        completion = tokenizer.decode(body, skip_special_tokens=True)
    return Sample(prompt=prompt, completion=completion, completion_ids=ids, ended_with_eos=ended)
