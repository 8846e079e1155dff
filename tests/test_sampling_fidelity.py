"""PPO scores what it sampled: a model's own generation_config.json never changes the
distribution preflab samples from, and the sampler's record of each token's log-prob equals
a fresh scoring pass."""

from __future__ import annotations

import shutil

import pytest
import torch

from preflab import models
from preflab.generation import generate, nucleus_filter
from preflab.rl.roles import _forward_token_logps
from preflab.rl.tensors import sample_rollout, sampler_logprob_gap

PROMPTS = [f"{d} {n} was" for d in ("the", "a", "this", "that") for n in ("movie", "film")] * 4


def model_with_generation_config(tiny_model_dir, tmp_path, **settings):
    """The tiny model, saved again with a generation_config.json holding ``settings``."""
    from transformers import GenerationConfig

    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    GenerationConfig(**settings).save_pretrained(out)
    model = models.load_causal_lm(str(out))
    for key, value in settings.items():  # the setting really is on the model
        assert getattr(model.generation_config, key) == value
    return model, models.load_tokenizer(str(out))


def fresh_logps(model, batch, temperature):
    with torch.no_grad():
        return _forward_token_logps(model, batch["input_ids"], batch["attention_mask"],
                                    keep_from=batch["context_length"] - 1,
                                    scored=batch["response_mask"],
                                    temperature=temperature).logps


@pytest.mark.parametrize("settings", [
    {"repetition_penalty": 1.3},
    {"suppress_tokens": [2]},  # the tiny tokenizer's EOS
    {"min_new_tokens": 8},
    {"no_repeat_ngram_size": 1},
    {"top_k": 3, "do_sample": True},
], ids=lambda s: next(iter(s)))
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_a_fresh_scoring_pass(tiny_model_dir, tmp_path, settings,
                                                     temperature):
    model, tokenizer = model_with_generation_config(tiny_model_dir, tmp_path, **settings)
    assert tokenizer.eos_token_id == 2
    samples, batch = sample_rollout(model, tokenizer, PROMPTS, response_length=8,
                                    temperature=temperature, batch_size=16, seed=3)
    fresh = fresh_logps(model, batch, temperature)
    mask = batch["response_mask"]
    assert torch.allclose(batch["sampler_logprobs"][mask], fresh[mask], atol=1e-5)
    assert sampler_logprob_gap(batch, fresh) < 1e-5
    assert any(s.ended_with_eos for s in samples), "EOS could not be sampled"
    assert any(not s.ended_with_eos for s in samples)


def test_without_isolation_the_saved_config_would_leak(tiny_model_dir, tmp_path):
    """The hazard the isolation removes, shown on this transformers version: a plain
    ``generate`` obeys the model's suppress_tokens and never ends with EOS."""
    model, tokenizer = model_with_generation_config(tiny_model_dir, tmp_path, suppress_tokens=[2])
    ids = torch.tensor([tokenizer("the movie was")["input_ids"]] * 32)
    torch.manual_seed(0)
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                           max_new_tokens=8, pad_token_id=0)
    assert not (plain[:, ids.shape[1]:] == 2).any()
    ours = generate(model, tokenizer, ["the movie was"], num_samples=32, max_new_tokens=8)
    assert any(s.ended_with_eos for s in ours[0])
    assert model.generation_config.suppress_tokens == [2]  # set aside, then restored


def test_nucleus_filter_keeps_the_smallest_set_reaching_top_p():
    """probs 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps the first two (0.5 + 0.3 reaches 0.8);
    top_p 0.81 needs the third; top_p 0.4 keeps the first alone."""
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    kept = lambda p: torch.isfinite(nucleus_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.8) == [False, True, False, True]
    assert kept(0.81) == [True, True, False, True]
    assert kept(0.4) == [False, True, False, False]
    assert kept(1.0) == [True] * 4


def test_top_p_sampler_logprobs_are_the_renormalised_nucleus(tiny_model_dir, tiny_tokenizer):
    """With top_p < 1 the recorded log-prob is log softmax over the nucleus: at least the
    full-softmax log-prob, and every sampled token inside the nucleus."""
    model = models.load_causal_lm(str(tiny_model_dir))
    groups = generate(model, tiny_tokenizer, PROMPTS[:4], num_samples=4, max_new_tokens=6,
                      top_p=0.5, seed=1)
    for s in [s for g in groups for s in g]:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1 : -1]
        nucleus = torch.log_softmax(nucleus_filter(logits, 0.5), -1)
        want = nucleus.gather(-1, torch.tensor(s.completion_ids)[:, None]).squeeze(-1)
        assert torch.isfinite(want).all()
        assert torch.allclose(torch.tensor(s.logprobs), want, atol=1e-5)
