"""The fused head (``preflab.models.fused_head``) against the plain logits path: equal values and
gradients (float32, tied and untied heads, LoRA on the head or not), and no ``[B, T, V]``
tensor anywhere in forward or backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from preflab.models.fused_head import fused_head_supported, head_token_logps
from preflab.models.logprobs import forward_logps, model_token_logps, packed_forward_logps
from preflab.models.tiny import build_random_causal_lm

VOCAB = 97


def _model(tied: bool, lora_on_head: bool = False, seed: int = 0):
    model = build_random_causal_lm("llama", VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                   seed=seed, tie_word_embeddings=tied)
    if lora_on_head:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                            target_modules=["q_proj", "v_proj", "lm_head"])
        model = get_peft_model(model, config)
        with torch.no_grad():  # LoRA's B starts at 0: move it so the adapter counts
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def _batch(seed: int = 0, B: int = 3, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    attention = torch.ones(B, T, dtype=torch.long)
    attention[1, :3] = 0  # left padding on one row
    ids[1, :3] = 0
    scored = torch.rand(B, T - 1, generator=g) > 0.3
    scored[1, :3] = False
    return ids, attention, scored


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # PEFT, on merging
@pytest.mark.parametrize("tied,lora_on_head", [(False, False), (True, False), (False, True),
                                               (True, True)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_equals_plain_values_and_gradients(tied, lora_on_head, temperature):
    model = _model(tied, lora_on_head)
    assert fused_head_supported(model)
    ids, attention, scored = _batch()
    weights = torch.randn(scored.shape, generator=torch.Generator().manual_seed(5))
    results = {}
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        out = model_token_logps(model, ids, attention_mask=attention, scored=scored,
                                temperature=temperature, entropy=True, chunk_size=4,
                                fused=fused)
        (out.logps * weights).sum().backward()
        results[fused] = (out.logps.detach(), out.entropy, _grads(model))
    (lp_f, ent_f, g_f), (lp_p, ent_p, g_p) = results[True], results[False]
    torch.testing.assert_close(lp_f, lp_p, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_f, ent_p, atol=1e-5, rtol=0)
    assert (lp_f[~scored] == 0).all() and (ent_f[~scored] == 0).all()
    assert g_f.keys() == g_p.keys() and g_f
    head_grads = [n for n in g_f if "lm_head" in n or "embed_tokens" in n]
    assert head_grads  # the head's weights (or the tied embedding, or its LoRA) are trained
    if lora_on_head:
        assert any("lm_head" in n and "lora" in n for n in g_f)
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_p[name], atol=1e-5, rtol=1e-4, msg=name)


def test_keep_window_and_forward_logps_match_the_plain_logits():
    model = _model(tied=True)
    ids, attention, _ = _batch(1)
    completion = torch.zeros_like(ids)
    completion[:, 5:] = 1
    with torch.no_grad():
        fused, none = forward_logps(model, ids, attention, completion)
        plain, logits = forward_logps(model, ids, attention, completion, keep_logits=True)
    assert none is None and logits.shape[1] < ids.shape[1]  # the head ran on a window
    torch.testing.assert_close(fused.sum, plain.sum, atol=1e-5, rtol=0)
    assert torch.equal(fused.count, plain.count)


def test_packed_forward_is_fused_and_equal_to_padded():
    model = _model(tied=False)
    ids, attention, _ = _batch(2)
    completion = attention.clone()
    completion[:, :4] = 0
    with torch.no_grad():
        padded, _ = forward_logps(model, ids, attention, completion)
        packed = packed_forward_logps(model, ids, attention, completion)
    torch.testing.assert_close(packed.sum, padded.sum, atol=1e-4, rtol=0)


class _Recorder(TorchDispatchMode):
    """The largest vocabulary-wide tensor (last dimension V) any op makes, by elements."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == VOCAB:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_no_full_vocabulary_tensor_in_forward_or_backward(fused):
    """With chunks of 32 positions, the fused path never makes a vocabulary-wide tensor of
    more than 32 x V elements (a chunk's logits; the head's weight, hidden 32 x V, is as
    large), where [B, T-1, V] is 256 x V; the plain path makes the whole logits (so the probe
    can see one)."""
    model = _model(tied=True)
    B, T = 4, 33
    ids = torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(0))
    model.train()
    recorder = _Recorder()
    with recorder:
        out = model_token_logps(model, ids, chunk_size=32, fused=fused)
        out.logps.sum().backward()
    if fused:
        assert 0 < recorder.largest <= 32 * VOCAB  # one chunk's logits at a time
    else:
        assert recorder.largest >= B * (T - 1) * VOCAB


def test_head_token_logps_empty_and_chunk_edges():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=True)
    hidden = torch.randn(7, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=g)
    want = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    for chunk in (1, 3, 7, 100):
        got, _ = head_token_logps(hidden, targets, head, params=tuple(head.parameters()),
                                  chunk=chunk)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        grads = torch.autograd.grad(got.sum(), [hidden, head.weight, head.bias])
        wants = torch.autograd.grad(want.sum(), [hidden, head.weight, head.bias],
                                    retain_graph=True)
        for a, b in zip(grads, wants):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    empty, _ = head_token_logps(hidden[:0], targets[:0], head, params=tuple(head.parameters()))
    assert empty.shape == (0,)


def test_a_model_that_changes_its_logits_after_the_head_is_scored_the_plain_way():
    """Soft-capping or a logit scale after the head would make the fused values wrong: the
    check finds it, and model_token_logps falls back to the plain logits."""
    inner = _model(tied=False)

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.logits = out.logits * 0.5
            return out

    model = Scaled()
    assert not fused_head_supported(model)
    ids, attention, scored = _batch(3)
    with torch.no_grad():
        got = model_token_logps(model, ids, attention_mask=attention, scored=scored)
        logits = model(input_ids=ids, attention_mask=attention).logits
    want = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    # positions follow the mask in model_token_logps; compare the unpadded rows
    torch.testing.assert_close(got.logps[[0, 2]], torch.where(scored, want, 0.0)[[0, 2]],
                               atol=1e-5, rtol=0)


def test_softcapped_configs_are_not_fused():
    model = _model(tied=False, seed=1)
    model.config.final_logit_softcapping = 30.0
    assert not fused_head_supported(model)


def test_an_instance_level_head_forward_is_used_and_put_back():
    """A forward set on the head instance (accelerate's hooks do this) computes the fused
    chunks, and is the head's forward again afterwards, not the class's."""
    model = _model(tied=False, seed=2)
    head = model.get_output_embeddings()
    calls = []

    def hooked(hidden):
        calls.append(hidden.shape[0])
        return type(head).forward(head, hidden)

    head.forward = hooked
    ids, attention, scored = _batch(4)
    assert fused_head_supported(model)
    calls.clear()  # the check's own forwards
    with torch.no_grad():
        got = model_token_logps(model, ids, attention_mask=attention, scored=scored)
        assert calls == [int(scored.sum())]  # the one fused chunk went through it
        want = model_token_logps(model, ids, attention_mask=attention, scored=scored,
                                 fused=False)
    assert head.__dict__["forward"] is hooked
    torch.testing.assert_close(got.logps, want.logps, atol=1e-5, rtol=0)
