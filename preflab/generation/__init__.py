"""Sampling completions from any Hugging Face causal LM: reproducible, and exactly as asked.

``generate`` runs the model in eval mode under ``torch.inference_mode`` (``no_grad`` for a
sharded model) with the KV cache, pads each batch on the LEFT (the attention mask hides the
pads and the model's position ids follow the mask), and stops each row at EOS. Prompts are tokenized as the data layer does it
(``tokenizer(prompt, add_special_tokens=True)``), so a policy sees its prompts the way it was
trained on them; a prompt from the data layer (``PromptExample.prompt``, a
``preflab.data.chat.PromptText``) brings its own ids, so a chat prompt rendered by the
template is fed exactly as the loader tokenized it (never encoded again, which would put a
second BOS before the template's own) and a truncated prompt stays truncated.

**The distribution is the one the caller names, and nothing else.** A model directory may
carry a ``generation_config.json`` (``repetition_penalty``, ``suppress_tokens``,
``min_new_tokens``, ``no_repeat_ngram_size``, ``top_k``, ...). Transformers fills every
setting a caller leaves unset from that file, so a policy-gradient method would sample from
one distribution and score its tokens under another. Here no generation config is read:
preflab applies the temperature and the nucleus (top-p) truncation and draws each token
itself, in ``_SamplingWarper`` (``draw``: inversion of the cumulative distribution, one
uniform per row), which also records the log-probability of every drawn token under the exact
distribution it was drawn from.

The decoding steps are preflab's own loop (``preflab.generation.decoding``: one prefill, then one forward
of the new tokens per step, a KV cache that grows in place) wherever it can drive the model,
and transformers' ``generate`` otherwise (``decoding.fits``; always for a sharded model). Both
give the same tokens for the same seed (``tests/test_decoding.py``). Through ``generate``, the
model's own generation config is set aside for the call (``_isolated_generation_config``) and
transformers is asked for greedy steps with no processors of its own, so it takes the token
``_SamplingWarper`` drew.

Each ``Sample`` holds:

- ``completion``: the text the completion adds to the prompt, decoded without special tokens:
  the decoding of prompt + completion minus the decoding of the prompt, so ``prompt +
  completion`` reads as one text (for a word-level tokenizer it starts with a space, as
  completions do in the ecosystem's data formats). Where the tokenizer does not decode the
  prompt back to a prefix of the whole, the completion tokens are decoded alone.
- ``completion_ids``: the sampled token ids, the final EOS included when there is one, no
  padding: exactly the actions a policy-gradient method scores.
- ``ended_with_eos``: whether the row stopped on EOS rather than on ``max_new_tokens``.
- ``prompt_ids``: the prompt's token ids as the model saw them.
- ``logprobs``: for each completion token, its log-probability under the sampling
  distribution (``softmax(logits / temperature)``, renormalised over the nucleus when
  ``top_p < 1``; the untempered softmax for greedy decoding).

A model sharded with FSDP2 (``--fsdp``) samples in lockstep: every process calls
``generate`` with the same number of batches, and each keeps stepping until every process's
batch is done (transformers' ``synced_gpus``), so its samples are those of the whole model.

Reproducibility: the sampler draws from torch's global generator, seeded with ``seed`` inside
``torch.random.fork_rng`` so the caller's RNG state is left as it was. The same model,
prompts and arguments give the same samples; a different ``batch_size`` gives different (but
equally distributed) samples, since rows share the generator's stream. Greedy decoding
(``temperature=0``) does not depend on batching.

May import: errors, data, models, runtime.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from preflab.data.chat import prompt_ids_for, tokenizer_key
from preflab.errors import ConfigError, DataError, NonFiniteProbabilities
from preflab.runtime import distributed


@dataclass
class Sample:
    prompt: str
    completion: str
    completion_ids: list[int]
    ended_with_eos: bool
    prompt_ids: list[int] = field(default_factory=list, compare=False)
    logprobs: list[float] = field(default_factory=list, compare=False)


def encode_prompt(tokenizer, prompt: str, key: tuple | None = None) -> list[int]:
    """A prompt's ids as ``generate`` feeds them; BOS alone if empty. A text is encoded with
    special tokens; a ``PromptText`` from the data layer (a rendered chat prompt, or a
    truncated one) gives its own ids (``preflab.data.chat.prompt_ids_for``; ``key`` is the
    tokenizer's ``tokenizer_key``, computed once for many prompts)."""
    ids = prompt_ids_for(tokenizer, prompt, key)
    if ids:
        return ids
    if tokenizer.bos_token_id is None:
        raise DataError(f"prompt {prompt!r} is empty after tokenization and the tokenizer has "
                        "no BOS token to start from", expected="a non-empty prompt")
    return [tokenizer.bos_token_id]


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


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the nucleus set to -inf, ``[..., V]``.

    The nucleus is the smallest set of most probable tokens whose probability reaches
    ``top_p`` (Holtzman et al. 2020); the most probable token is always kept.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def draw(log_probs: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One token per row from ``exp(log_probs)`` ``[B, V]``, by inversion: a uniform draw per
    row, scaled to the row's total mass, looked up in the cumulative sum. The sum is in
    ``dtype``: float64 by default, exact to about 1e-13 over a large vocabulary; float32 on
    Apple's MPS, which has no float64 (about 1e-7 of the mass per entry). A token of
    probability 0 (outside the nucleus) is never drawn. One uniform per row from torch's
    generator, where ``torch.multinomial`` draws one exponential per vocabulary entry: the
    same distribution at a fraction of the cost (``docs/performance.md``)."""
    if dtype is None:
        dtype = torch.float32 if log_probs.device.type == "mps" else torch.float64
    cdf = log_probs.to(dtype, copy=True).exp_().cumsum(dim=-1)  # never the caller's tensor
    total = cdf[:, -1:]
    u = torch.rand(total.shape, dtype=dtype, device=cdf.device) * total
    # strictly below the total, so some entry of the cumulative sum exceeds it
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


class _SamplingWarper:
    """The sampler: temperature, nucleus, the draw, and a record of each drawn token's log-prob.

    ``pick`` takes a step's next-token logits and returns the drawn tokens (``draw``, or the
    argmax for greedy decoding); preflab's own loop (``preflab.generation.decoding``) calls it directly.
    Under ``model.generate`` it is the last logits processor: transformers calls it once per
    step with the ids so far and the logits, and it returns scores that are -inf everywhere but
    at the drawn token, so transformers' greedy step (the config says ``do_sample=False``)
    takes exactly that token. Either way one ``pick`` per step, for every row.
    """

    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature, self.top_p = temperature, top_p
        self.steps: list[torch.Tensor] = []

    def pick(self, scores: torch.Tensor) -> torch.Tensor:
        """One token per row from next-token logits ``[B, V]``; records its log-prob."""
        if self.temperature > 0:
            if self.temperature != 1:  # x / 1 == x: skip a pass over [B, V]
                scores = scores / self.temperature
            scores = nucleus_filter(scores, self.top_p)
        log_probs = torch.log_softmax(scores.float(), dim=-1)
        # NaN or +inf logits, or no token left at all, make NaNs. A row's sum is NaN exactly
        # when one of its entries is (log-probs are never +inf), and costs an eighth of isnan
        if torch.isnan(log_probs.sum(dim=-1)).any():
            raise NonFiniteProbabilities(
                f"the model's next-token probabilities hold NaN or inf at generated token "
                f"{len(self.steps) + 1}, so nothing can be sampled (its weights or inputs hold "
                f"NaN or inf)")
        tokens = draw(log_probs) if self.temperature > 0 else scores.argmax(dim=-1)
        self.steps.append(log_probs.gather(-1, tokens[:, None]).squeeze(-1))
        return tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = self.pick(scores)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(-1, tokens[:, None], 0.0)

    def finish(self, rows: int) -> torch.Tensor:
        """Per-step log-probs of the drawn tokens, ``[rows, steps]``."""
        if not self.steps:
            return torch.zeros(rows, 0)
        return torch.stack(self.steps, dim=1).float().cpu()


def _generation_modules(model) -> list:
    from transformers import GenerationMixin

    return [m for m in model.modules() if isinstance(m, GenerationMixin)]


@contextlib.contextmanager
def _isolated_generation_config(model):
    """Set aside the generation config a model was saved with, for the length of a call."""
    from transformers import GenerationConfig

    saved = [(m, m.generation_config) for m in _generation_modules(model)]
    try:
        for m, _ in saved:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in saved:
            m.generation_config = config


def generation_config(*, max_new_tokens: int, pad_token_id: int, eos_token_id: int | None,
                      bos_token_id: int | None):
    """Every setting that shapes the next-token distribution, set to "off" explicitly, and
    greedy steps: ``_SamplingWarper`` has already drawn the token and left it the only one.

    With the model's own config set aside this is already the library default; stating it
    keeps the sampler honest against a future default that changes.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, num_beams=1, temperature=1.0, top_k=None, top_p=1.0, min_p=None,
        typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
        no_repeat_ngram_size=0, min_new_tokens=0, max_new_tokens=max_new_tokens,
        suppress_tokens=None, begin_suppress_tokens=None, bad_words_ids=None,
        forced_bos_token_id=None, forced_eos_token_id=None, renormalize_logits=False,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
    )


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
    from transformers import LogitsProcessorList

    from preflab.generation import decoding

    _validate(num_samples, max_new_tokens, temperature, top_p, batch_size)
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0
    key = tokenizer_key(tokenizer)
    encoded = [encode_prompt(tokenizer, p, key) for p in prompts]
    prompt_texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded]
    gen_config = generation_config(max_new_tokens=max_new_tokens,
                                   pad_token_id=pad_id, eos_token_id=eos_id,
                                   bos_token_id=tokenizer.bos_token_id)
    jobs = [(i, j) for i in range(len(prompts)) for j in range(num_samples)]
    # Batches of prompts of like length, longest first: a left-padded batch computes on the
    # longest prompt's width for every row, so mixing lengths pays for padding.
    jobs.sort(key=lambda job: -len(encoded[job[0]]))
    batches = [jobs[k : k + batch_size] for k in range(0, len(jobs), batch_size)]
    device = next(model.parameters()).device
    results: list[list[Sample | None]] = [[None] * num_samples for _ in prompts]

    # a sharded model's every forward pass is collective: each process keeps stepping (on
    # finished rows) until every process's batch is done, and all run the same batch count
    synced = distributed.is_sharded(model)
    # preflab's own decoding loop where it can drive the model; a sharded model's lockstep
    # (synced_gpus) is left to transformers
    own_loop = not synced and decoding.fits(model)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        # no inference tensors for a sharded model: FSDP2 reuses its gathered weights'
        # storage in place when training resumes
        no_grad = torch.no_grad() if synced else torch.inference_mode()
        with (torch.random.fork_rng(devices=devices), no_grad,
              _isolated_generation_config(model)):
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
                warper = _SamplingWarper(temperature, top_p)
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                if own_loop:
                    new_tokens = decoding.decode(
                        model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                        pad_id=pad_id, eos_id=eos_id, pick=warper.pick).tolist()
                else:
                    output = model.generate(
                        input_ids=input_ids, attention_mask=attention_mask,
                        generation_config=gen_config,
                        logits_processor=LogitsProcessorList([warper]),
                        synced_gpus=synced,
                    )
                    new_tokens = output[:, width:].tolist()
                logprobs = warper.finish(len(batch)).tolist()
                for (i, j), ids, lps in zip(batch, new_tokens, logprobs):
                    results[i][j] = _make_sample(
                        tokenizer, prompts[i], encoded[i], prompt_texts[i], ids, eos_id, lps
                    )
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _make_sample(tokenizer, prompt: str, prompt_ids: list[int], prompt_text: str,
                 new_ids: list[int], eos_id: int | None,
                 logprobs: list[float] | None = None) -> Sample:
    ended = eos_id is not None and eos_id in new_ids
    ids = new_ids[: new_ids.index(eos_id) + 1] if ended else list(new_ids)
    body = ids[:-1] if ended else ids
    full_text = tokenizer.decode(prompt_ids + body, skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        completion = full_text[len(prompt_text) :]
    else:
        completion = tokenizer.decode(body, skip_special_tokens=True)
    return Sample(prompt=prompt, completion=completion, completion_ids=ids, ended_with_eos=ended,
                  prompt_ids=list(prompt_ids), logprobs=list(logprobs or [])[: len(ids)])
