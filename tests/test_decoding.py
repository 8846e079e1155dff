"""preflab's own decoding loop against transformers' generate: the same tokens, the same
log-probs, on every architecture family of ``preflab.models.tiny``; and the fall-back to generate for
a model the loop cannot drive."""

from __future__ import annotations

import pytest
import torch

from preflab.generation import decoding, generate
from preflab.models.tiny import ARCHITECTURES, build_random_causal_lm

# lengths 1 to 9 words: batches of 4 mix lengths (left padding) and some hold one length
PROMPTS = ["i", "the movie", "a film was not very good", "the plot was great but the acting",
           "it was fun", "this film is so boring", "the story", "really bad",
           "the acting was fine but the plot was not"]


def tiny(arch, tok, seed=3):
    return build_random_causal_lm(arch, len(tok), pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  seed=seed)


def both_paths(model, tok, monkeypatch, **kwargs):
    """``generate``'s samples through preflab's loop, then through ``model.generate``."""
    assert decoding.fits(model)
    ours = generate(model, tok, PROMPTS, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(decoding, "fits", lambda model: False)
        theirs = generate(model, tok, PROMPTS, **kwargs)
    return ours, theirs


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)],
                         ids=["greedy", "sampled", "tempered-nucleus"])
def test_own_loop_gives_generates_tokens_and_logprobs(arch, temperature, top_p, tiny_tokenizer,
                                                       monkeypatch):
    """Both paths feed the model the same inputs and call the sampler once per step for every
    row, so with one seed they draw the same uniforms in the same order: the same tokens
    exactly, across three batches (a path drawing more or fewer would shift every later
    batch), with EOS reached by some rows and not others."""
    model = tiny(arch, tiny_tokenizer)
    ours, theirs = both_paths(model, tiny_tokenizer, monkeypatch, num_samples=4,
                              max_new_tokens=10, temperature=temperature, top_p=top_p,
                              batch_size=12, seed=5)
    assert ours == theirs
    samples = [s for row in ours for s in row]
    assert any(s.ended_with_eos for s in samples) or temperature == 0
    assert any(not s.ended_with_eos for s in samples)
    for a, b in zip(samples, [s for row in theirs for s in row]):
        assert a.logprobs == b.logprobs


def test_a_lora_policy_is_decoded_by_the_loop_as_peft_generates_it(tiny_tokenizer,
                                                                     monkeypatch):
    """A PEFT LoRA wrapper (``--lora-rank``) is driven through the model it wraps, whose
    layers hold the adapters: the same samples as PEFT's own ``generate``, and adapters that
    change the samples (their B matrices set non-zero) change them in both."""
    from preflab.models import apply_lora

    tok = tiny_tokenizer
    policy = apply_lora(tiny("llama", tok), rank=4)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_samples=2, max_new_tokens=8, batch_size=6, seed=4)
    ours, theirs = both_paths(policy, tok, monkeypatch, **kwargs)
    assert ours == theirs
    with policy.disable_adapter():
        assert generate(policy, tok, PROMPTS, **kwargs) != ours


def test_a_model_the_loop_cannot_drive_falls_back_to_generate(tiny_tokenizer, monkeypatch):
    """A Llama whose forward does not take ``position_ids`` (as some remote-code models):
    ``fits`` says no, ``generate`` goes through ``model.generate``, and the samples are those
    of the unchanged model through preflab's loop."""
    tok = tiny_tokenizer
    plain = tiny("llama", tok)

    class NoPositions(type(plain)):
        def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=None,
                    logits_to_keep=0, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   cache=cache, use_cache=use_cache,
                                   logits_to_keep=logits_to_keep, **kwargs)

    odd = tiny("llama", tok)
    odd.__class__ = NoPositions
    assert decoding.fits(plain) and not decoding.fits(odd)
    calls = []
    real = odd.generate
    monkeypatch.setattr(odd, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    kwargs = dict(num_samples=2, max_new_tokens=6, batch_size=6, seed=2)
    assert generate(odd, tok, PROMPTS, **kwargs) == generate(plain, tok, PROMPTS, **kwargs)
    assert len(calls) == 3  # 18 rows, batches of 6


def test_decode_pads_finished_rows_and_stops_when_all_have_ended(tiny_tokenizer):
    """A scripted ``pick``: row 0 ends at step 2, row 1 at step 4. Row 0 is padded after its
    EOS, ``pick`` still sees both rows every step, and decoding stops after step 4 of 8."""
    tok = tiny_tokenizer
    model = tiny("llama", tok).eval()
    eos, pad, word = tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("movie")
    script = [[word, word], [eos, word], [word, word], [word, eos], [word, word]]
    seen = []

    def pick(logits):
        seen.append(logits.shape)
        return torch.tensor(script[len(seen) - 1])

    ids = torch.tensor([[pad, 5, 6], [5, 6, 7]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with torch.inference_mode():
        out = decoding.decode(model, ids, mask, max_new_tokens=8, pad_id=pad, eos_id=eos,
                              pick=pick)
    assert out.tolist() == [[word, eos, pad, pad], [word, word, word, eos]]
    assert seen == [torch.Size([2, len(tok)])] * 4


def test_in_place_cache_holds_what_a_dynamic_cache_holds(tiny_tokenizer):
    """Prefill then three steps: each layer's keys and values in the in-place cache equal
    transformers' concatenating ``DynamicCache``'s, and so do the logits."""
    from transformers import DynamicCache

    tok = tiny_tokenizer
    model = tiny("llama", tok).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    ours, theirs = decoding.kv_cache(model, capacity=7), DynamicCache(config=model.config)
    with torch.inference_mode():
        for step in range(4):
            x = ids if step == 0 else ids[:, step - 1 : step]
            a = model(input_ids=x, cache=ours, use_cache=True).logits
            b = model(input_ids=x, cache=theirs, use_cache=True).logits
            assert torch.equal(a, b)
    for mine, ref in zip(ours.layers, theirs.layers):
        assert isinstance(mine, decoding._InPlaceLayer)
        assert torch.equal(mine.keys, ref.keys) and torch.equal(mine.values, ref.values)
    assert ours.get_seq_length() == 7
