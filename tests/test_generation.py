"""Sampling from a causal LM: left padding, EOS handling, decoding, reproducibility."""

from __future__ import annotations

import pytest
import torch

from preflab.errors import ConfigError, NonFiniteProbabilities
from preflab.generation import Sample, _make_sample, draw, generate
from preflab.models.tiny import build_random_causal_lm

PROMPTS = ["the movie", "a film was not very good", "i", "the plot was great but the acting"]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    tok = tiny_tokenizer
    return build_random_causal_lm("llama", len(tok), pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  seed=1)


def test_left_padded_greedy_batch_equals_one_at_a_time(model, tiny_tokenizer):
    batched = generate(model, tiny_tokenizer, PROMPTS, temperature=0, max_new_tokens=12,
                       batch_size=len(PROMPTS))
    for prompt, row in zip(PROMPTS, batched):
        alone = generate(model, tiny_tokenizer, [prompt], temperature=0, max_new_tokens=12)
        assert row[0] == alone[0][0]


def test_greedy_equals_a_plain_argmax_loop(model, tiny_tokenizer):
    """Brute force: no cache, no padding, argmax of the last position's logits."""
    prompt = PROMPTS[1]
    ids = tiny_tokenizer(prompt)["input_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(8):
            logits = model(input_ids=torch.tensor([ids + expected])).logits[0, -1]
            expected.append(int(logits.argmax()))
            if expected[-1] == tiny_tokenizer.eos_token_id:
                break
    sample = generate(model, tiny_tokenizer, [prompt], temperature=0, max_new_tokens=8)[0][0]
    assert sample.completion_ids == expected


def test_sampling_is_reproducible_and_leaves_global_rng_alone(model, tiny_tokenizer):
    state = torch.random.get_rng_state()
    a = generate(model, tiny_tokenizer, PROMPTS, num_samples=3, max_new_tokens=10, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = generate(model, tiny_tokenizer, PROMPTS, num_samples=3, max_new_tokens=10, seed=7)
    c = generate(model, tiny_tokenizer, PROMPTS, num_samples=3, max_new_tokens=10, seed=8)
    assert a == b and a != c
    assert [len(row) for row in a] == [3] * len(PROMPTS)
    assert all(s.prompt == p for p, row in zip(PROMPTS, a) for s in row)


def test_samples_stop_at_eos_without_padding_and_decode_consistently(model, tiny_tokenizer):
    tok = tiny_tokenizer
    model.train()
    groups = generate(model, tok, PROMPTS, num_samples=8, max_new_tokens=10, seed=0)
    assert model.training  # the caller's mode is restored
    samples = [s for row in groups for s in row]
    assert any(s.ended_with_eos for s in samples)
    special = set(tok.all_special_ids)
    for s in samples:
        assert len(s.completion_ids) <= 10
        assert s.completion_ids.count(tok.eos_token_id) == int(s.ended_with_eos)
        if s.ended_with_eos:
            assert s.completion_ids[-1] == tok.eos_token_id
        else:
            assert len(s.completion_ids) == 10
        words = [i for i in s.completion_ids if i not in special]
        assert tok(s.completion, add_special_tokens=False)["input_ids"] == words
        full = tok.decode(tok(s.prompt)["input_ids"] + s.completion_ids, skip_special_tokens=True)
        assert s.prompt + s.completion == full


def test_make_sample_cuts_at_the_first_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    movie, good, eos, pad = (tok.convert_tokens_to_ids("movie"), tok.convert_tokens_to_ids("good"),
                             tok.eos_token_id, tok.pad_token_id)
    prompt_ids = tok("the")["input_ids"]
    s = _make_sample(tok, "the", prompt_ids, "the", [movie, good, eos, pad, pad], eos)
    assert s == Sample("the", " movie good", [movie, good, eos], True)
    s = _make_sample(tok, "the", prompt_ids, "the", [movie, good], eos)
    assert s == Sample("the", " movie good", [movie, good], False)


def test_invalid_settings_are_config_errors(model, tiny_tokenizer):
    for kwargs in ({"num_samples": 0}, {"max_new_tokens": 0}, {"temperature": -1.0},
                   {"top_p": 0.0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            generate(model, tiny_tokenizer, ["the"], **kwargs)


def test_batches_group_prompts_of_like_length(model, tiny_tokenizer, monkeypatch):
    """Two short and two long prompts, interleaved, batches of 2: each decoded batch holds
    prompts of one length (no row padded to the other's width), and every result is still
    prompt i's own, greedy-equal to sampling it alone."""
    from preflab.generation import decoding

    prompts = ["i", "the plot was great but the acting was not", "a",
               "the movie was not very good and the film"]
    widths, calls = [], []
    real = decoding.decode

    def spy(model, input_ids, attention_mask, **kwargs):
        widths.append(attention_mask.shape[1])
        calls.append(attention_mask.sum(dim=1).tolist())
        return real(model, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(decoding, "decode", spy)
    rows = generate(model, tiny_tokenizer, prompts, temperature=0, max_new_tokens=6,
                    batch_size=2)
    assert all(len(set(lengths)) == 1 for lengths in calls)  # no padding within a batch
    assert widths[0] > widths[1]  # longest first
    monkeypatch.undo()
    for prompt, row in zip(prompts, rows):
        assert row[0] == generate(model, tiny_tokenizer, [prompt], temperature=0,
                                  max_new_tokens=6)[0][0]


@pytest.mark.parametrize("dtype", [None, torch.float32], ids=["float64", "float32-as-on-mps"])
def test_draw_follows_the_distribution_and_never_takes_a_zero_probability_token(dtype):
    """200,000 draws from (0.5, 0.3, 0.15, 0.05, 0): each frequency within 5 binomial standard
    deviations (at most 0.0056), the last token never; a row with all its mass on one token
    (the others -inf, as outside a nucleus) always gives that token."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0], dtype=torch.float64)
    n = 200_000
    torch.manual_seed(0)
    tokens = draw(probs.log().float().expand(n, 5), dtype=dtype)
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert (freq - probs).abs().max() < 5 * (0.25 / n) ** 0.5
    assert freq[4] == 0
    one = torch.full((1000, 7), float("-inf"))
    one[:, 6] = 0.0
    assert draw(one, dtype=dtype).eq(6).all()
    assert torch.isinf(one[:, :6]).all() and one[:, 6].eq(0).all()  # the input is left as it was
    # unnormalised log-probs are drawn in proportion (the mass is rescaled per row)
    torch.manual_seed(1)
    halves = draw(torch.log(torch.tensor([[2.0, 2.0]])).expand(n, 2), dtype=dtype)
    assert abs(halves.double().mean().item() - 0.5) < 5 * (0.25 / n) ** 0.5


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_nan_probabilities_are_an_error_not_a_token(tiny_tokenizer, temperature):
    """A model whose logits hold NaN: sampling and greedy decoding both refuse to pick a token
    (``rl.loop`` reports it as the run diverging), instead of drawing an arbitrary one."""
    tok = tiny_tokenizer
    broken = build_random_causal_lm("llama", len(tok), pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, seed=2)
    with torch.no_grad():
        broken.get_output_embeddings().weight[5].fill_(float("nan"))
    with pytest.raises(NonFiniteProbabilities, match="generated token 1"):
        generate(broken, tok, PROMPTS[:2], temperature=temperature, max_new_tokens=4)


def test_sampling_and_greedy_decoding_leave_no_transformers_warning(tiny_model_dir):
    """The greedy steps that take the warper's token are asked for with no sampling flag
    transformers would call invalid (it logs "generation flags are not valid" once per
    process otherwise): run in a fresh process, so the once-only warning cannot hide."""
    import subprocess
    import sys

    code = ("from preflab import models; from preflab.generation import generate\n"
            f"m = models.load_causal_lm({str(tiny_model_dir)!r})\n"
            f"t = models.load_tokenizer({str(tiny_model_dir)!r})\n"
            "generate(m, t, ['the movie'], max_new_tokens=3)\n"
            "generate(m, t, ['the movie'], max_new_tokens=3, temperature=0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "not valid" not in out.stderr and "warn" not in out.stderr.lower(), out.stderr
