"""preflab.models.logprobs against brute force: the shift, the masks, padding, chunking, one forward."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from preflab.models.logprobs import (
    completion_window,
    concatenated_forward,
    forward_logps,
    nll_loss_sum,
    position_ids_from_attention_mask,
    sequence_logps,
    token_logps,
)
from preflab.models.tiny import build_random_causal_lm

VOCAB = 50
PAD = 0


def brute_token_logps(logits, ids):
    """For each b, t: log_softmax(logits[b, t])[ids[b, t + 1]], as nested Python loops."""
    B, T, _ = logits.shape
    out = torch.zeros(B, T - 1, dtype=torch.float64)
    for b in range(B):
        for t in range(T - 1):
            out[b, t] = torch.log_softmax(logits[b, t].double(), -1)[ids[b, t + 1]]
    return out


def naive_token_logps(logits, ids):
    """The full-vocabulary float32 version the chunked one must equal (values and grads)."""
    full = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return full.gather(-1, ids[:, 1:, None]).squeeze(-1)


@pytest.fixture()
def random_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    ids = torch.randint(0, 11, (3, 7), generator=g)
    return logits, ids


def test_token_logps_matches_brute_force(random_batch):
    logits, ids = random_batch
    got = token_logps(logits, ids)
    assert got.shape == (3, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), brute_token_logps(logits, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 1024])
def test_chunked_equals_unchunked_values_and_gradients(random_batch, chunk_size):
    logits, ids = random_batch
    weights = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    got = token_logps(a, ids, chunk_size=chunk_size)
    want = naive_token_logps(b, ids)
    torch.testing.assert_close(got, want)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.all(a.grad[:, -1] == 0)  # the last position predicts nothing


def test_bf16_logits_path(random_batch):
    logits, ids = random_batch
    low = logits.to(torch.bfloat16).requires_grad_()
    got = token_logps(low, ids, chunk_size=4)
    assert got.dtype == torch.float32
    # Exact against the float32 computation on the same (bf16-rounded) values.
    torch.testing.assert_close(got, naive_token_logps(low.detach().float(), ids))
    got.sum().backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
    ref = low.detach().float().requires_grad_()
    naive_token_logps(ref, ids).sum().backward()
    torch.testing.assert_close(low.grad.float(), ref.grad, atol=1e-2, rtol=1e-2)


class NewStorages(TorchDispatchMode):
    """Records the byte size of every storage an op creates (not one it was given)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor)}
        self.sizes += [t.untyped_storage().nbytes() for t in tree_flatten(out)[0]
                       if isinstance(t, torch.Tensor)
                       and t.untyped_storage().data_ptr() not in inputs]
        return out


def test_backward_allocates_only_the_gradient_for_float32_logits():
    """Backward builds each chunk's gradient in place in the logits' gradient: no other tensor
    of a chunk's size (``[B, chunk, V]`` float32) is allocated, so its peak is the logits and
    their gradient (a 20M-parameter DPO step held about 125 MiB of chunk temporaries before)."""
    g = torch.Generator().manual_seed(0)
    B, T, V, chunk = 4, 33, 64, 32  # 8 positions per chunk, 4 chunks
    logits = torch.randn(B, T, V, generator=g).requires_grad_()
    ids = torch.randint(0, V, (B, T), generator=g)
    out = token_logps(logits, ids, chunk_size=chunk)
    weights = torch.randn(out.shape, generator=g)
    with NewStorages() as seen:
        (out * weights).sum().backward()
    chunk_bytes = B * (chunk // B) * V * 4
    whole = B * T * V * 4
    assert whole in seen.sizes  # the gradient itself
    assert max(n for n in seen.sizes if n != whole) < chunk_bytes
    naive = logits.detach().clone().requires_grad_()
    (naive_token_logps(naive, ids) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, naive.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_overwriting_the_logits_gives_the_same_gradients_with_one_tensor_fewer(dtype):
    """``overwrite_logits``: backward writes the gradient over the head's output instead of
    into a new ``[B, T, V]`` tensor; the head's and the hidden states' gradients are those
    of the ordinary backward."""
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 4, 17, 8, 64
    ids = torch.randint(0, V, (B, T), generator=g)
    hidden0 = torch.randn(B, T, H, generator=g, dtype=dtype)
    weight0 = torch.randn(V, H, generator=g, dtype=dtype)
    weights = torch.randn(B, T - 1, generator=g)
    grads, outs = {}, {}
    for overwrite in (False, True):
        hidden = hidden0.clone().requires_grad_()
        weight = weight0.clone().requires_grad_()
        logits = hidden @ weight.T
        out = token_logps(logits, ids, chunk_size=8, overwrite_logits=overwrite)
        whole = logits.untyped_storage().nbytes()
        del logits
        with NewStorages() as seen:
            (out * weights).sum().backward()
        assert (whole in seen.sizes) is not overwrite  # no new tensor of the logits' size
        grads[overwrite], outs[overwrite] = (hidden.grad, weight.grad), out
    torch.testing.assert_close(outs[True], outs[False])
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)


def test_overwritten_logits_that_another_op_saved_fail_loudly():
    """Logits that another autograd node kept for its backward are not silently clobbered:
    the write bumps their version, and that node's backward refuses them."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 4, generator=g, requires_grad=True)
    logits = hidden @ torch.randn(4, 9, generator=g)
    kept = logits.square().sum()  # saves the logits; its backward runs after token_logps'
    loss = token_logps(logits, torch.randint(0, 9, (2, 5), generator=g),
                       overwrite_logits=True).sum() + kept
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_sequence_logps_masks_and_shift(random_batch):
    """completion_mask[:, 0] is ignored; mask[:, t] selects token_logps[:, t - 1]."""
    logits, ids = random_batch
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    seq = sequence_logps(logits, ids, mask)
    brute = brute_token_logps(logits, ids)
    want_sum = [brute[0].sum(), brute[1, 2] + brute[1, 3], torch.tensor(0.0)]
    torch.testing.assert_close(seq.sum.double(), torch.stack(want_sum).double(), atol=1e-5, rtol=0)
    assert seq.count.tolist() == [6, 2, 0]
    torch.testing.assert_close(seq.mean[:2], seq.sum[:2] / torch.tensor([6.0, 2.0]))
    assert seq.mean[2] == 0  # no tokens: mean is 0, not NaN
    loss_sum, count = nll_loss_sum(logits, ids, mask)
    torch.testing.assert_close(loss_sum, -seq.sum.sum())
    assert count.item() == 8


def test_position_ids_from_attention_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids_from_attention_mask(mask).tolist() == [
        [0, 0, 0, 1, 2],
        [0, 1, 2, 2, 2],
        [0, 1, 2, 3, 4],
    ]


# --- against a tiny random Llama -----------------------------------------------------------

SEQUENCES = [  # (prompt, completion) token ids; lengths differ so padding is needed
    ([1, 5, 6], [7, 8, 2]),
    ([1, 9], [10, 11, 12, 13, 2]),
    ([1, 14, 15, 16, 17], [18, 2]),
    ([1, 20, 21], [22, 23, 2]),
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_random_causal_lm("llama", vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4)
    return m.eval()


def pad_batch(pairs, side):
    """input_ids, attention_mask, completion_mask ``[N, T]`` padded on ``side``."""
    T = max(len(p) + len(c) for p, c in pairs)
    rows = []
    for prompt, completion in pairs:
        ids = prompt + completion
        comp = [0] * len(prompt) + [1] * len(completion)
        n = T - len(ids)
        pad_ids, zeros = [PAD] * n, [0] * n
        if side == "left":
            rows.append((pad_ids + ids, zeros + [1] * len(ids), zeros + comp))
        else:
            rows.append((ids + pad_ids, [1] * len(ids) + zeros, comp + zeros))
    return tuple(torch.tensor([r[i] for r in rows]) for i in range(3))


def unpadded_logps(model, pairs):
    """One sequence at a time, no padding: the ground truth for every padded layout."""
    sums, means = [], []
    with torch.no_grad():
        for prompt, completion in pairs:
            ids = torch.tensor([prompt + completion])
            logits = model(input_ids=ids).logits
            seq = sequence_logps(
                logits, ids, torch.tensor([[0] * len(prompt) + [1] * len(completion)])
            )
            sums.append(seq.sum[0])
            means.append(seq.mean[0])
    return torch.stack(sums), torch.stack(means)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded_sequences(model, side):
    want_sum, want_mean = unpadded_logps(model, SEQUENCES)
    ids, attn, comp = pad_batch(SEQUENCES, side)
    with torch.no_grad():
        seq, logits = forward_logps(model, ids, attn, comp, chunk_size=3, keep_logits=True)
        fused, _ = forward_logps(model, ids, attn, comp, chunk_size=3)
    torch.testing.assert_close(fused.sum, want_sum, atol=1e-5, rtol=0)
    # the head ran only from the position before the earliest completion token
    first = min(int(row.nonzero()[0]) for row in comp)
    assert logits.shape == (ids.shape[0], ids.shape[1] - first + 1, VOCAB)
    assert completion_window(comp) == ids.shape[1] - first + 1 < ids.shape[1]
    torch.testing.assert_close(seq.sum, want_sum, atol=1e-5, rtol=0)
    torch.testing.assert_close(seq.mean, want_mean, atol=1e-5, rtol=0)
    assert seq.count.tolist() == [len(c) for _, c in SEQUENCES]


def test_a_model_without_logits_to_keep_scores_the_same_on_all_positions(model):
    """A forward that does not take ``logits_to_keep`` gets every position's logits, and the
    same completion log-probs."""
    from preflab.models.logprobs import takes_logits_to_keep

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, use_cache=use_cache)

    ids, attn, comp = pad_batch(SEQUENCES, "left")
    assert takes_logits_to_keep(model) and not takes_logits_to_keep(Plain(model))
    with torch.no_grad():
        kept, few = forward_logps(model, ids, attn, comp, keep_logits=True)
        whole, every = forward_logps(Plain(model), ids, attn, comp, keep_logits=True)
        fused, _ = forward_logps(Plain(model), ids, attn, comp)  # no head to fuse: plain
    torch.testing.assert_close(fused.sum, whole.sum, atol=1e-5, rtol=0)
    assert every.shape[1] == ids.shape[1] > few.shape[1]
    torch.testing.assert_close(kept.sum, whole.sum, atol=1e-5, rtol=0)


def test_forward_logps_gradients_flow(model):
    ids, attn, comp = pad_batch(SEQUENCES, "left")
    model.zero_grad()
    seq, _ = forward_logps(model, ids, attn, comp, chunk_size=2)
    seq.sum.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def test_concatenated_forward_equals_two_forwards(model):
    chosen, rejected = SEQUENCES[:2], SEQUENCES[2:]
    ids, attn, comp = pad_batch(chosen + rejected, "left")
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "batch_size": 2}
    with torch.no_grad():
        got_c, got_r = concatenated_forward(model, batch)
        want_c, _ = forward_logps(model, *pad_batch(chosen, "left"))
        want_r, _ = forward_logps(model, *pad_batch(rejected, "left"))
    for got, want in ((got_c, want_c), (got_r, want_r)):
        torch.testing.assert_close(got.sum, want.sum, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.mean, want.mean, atol=1e-5, rtol=0)
        assert torch.equal(got.count, want.count)
    with pytest.raises(ValueError, match="batch_size"):
        concatenated_forward(model, {**batch, "batch_size": 3})


def test_no_float32_copy_of_logits_is_kept_for_backward():
    """What autograd saves for backward: the bf16 logits themselves plus O(B T) float32,
    never a float32 [B, T, V] tensor (the naive log_softmax keeps one)."""
    logits = torch.randn(2, 16, 64).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, 64, (2, 16))
    saved = []

    def pack(x):
        saved.append((x.dtype, x.numel()))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        token_logps(logits, ids, chunk_size=8)
    big_float32 = [n for dtype, n in saved if dtype == torch.float32 and n >= 2 * 15 * 64]
    assert not big_float32, saved
    assert (torch.bfloat16, logits.numel()) in saved  # backward recomputes from these
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        naive_token_logps(logits, ids)
    assert any(dtype == torch.float32 and n >= 2 * 15 * 64 for dtype, n in saved)


# --- padding-free ------------------------------------------------------------------------------

def _ragged_batch(vocab: int, seed: int = 0):
    """Four rows of 10, 6, 4 and 3 tokens, left and right padding mixed, each with a prompt
    before its completion: packed, they make the rows [10], [6 + 4] and [3]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 10), generator=g)
    attention = torch.tensor([[1] * 10, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
                              [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]])
    completion = torch.zeros_like(attention)
    completion[0, 5:] = 1
    completion[1, 6:] = 1
    completion[2, 2:4] = 1
    completion[3, 8:] = 1
    return ids, attention, completion


def test_padding_free_gives_the_padded_losses_and_gradients(tiny_model_dir):
    """The rows packed into one (positions restarting, no attention mask) give each row's
    summed and mean completion log-prob, and the gradient of a weighted sum of them, that
    the padded batch gives, to float tolerance."""
    from transformers import AutoModelForCausalLM

    from preflab.models.logprobs import forward_logps, pack, packed_forward_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    for module in model.modules():  # dropout would differ between the two passes
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids, attention, completion = _ragged_batch(model.config.vocab_size)
    packed = pack(ids, attention, completion)
    assert packed["input_ids"].shape == (3, 10)  # 40 padded tokens -> 30, 7 of them fill
    assert packed["row_of"].tolist() == [[0] * 10, [1] * 6 + [2] * 4, [3] * 3 + [-1] * 7]
    assert packed["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    weights = torch.tensor([0.3, -1.0, 2.0, 0.7])
    padded, _ = forward_logps(model, ids, attention, completion)
    (padded.sum * weights).sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = packed_forward_logps(model, ids, attention, completion)
    (got.sum * weights).sum().backward()
    torch.testing.assert_close(got.sum, padded.sum, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.mean, padded.mean, atol=1e-5, rtol=1e-5)
    assert got.count.tolist() == padded.count.tolist() == [5, 4, 2, 2]
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packing_check_refuses_attention_that_crosses_sequences(tiny_model_dir, monkeypatch):
    """With transformers' packed-sequence detection switched off, attention runs across the
    packed rows; the check sees the log-probs change and refuses."""
    from transformers import AutoModelForCausalLM, masking_utils

    from preflab.models.logprobs import check_packing

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    check_packing(model, vocab_size=model.config.vocab_size)  # honoured: passes
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(ValueError, match="reaches across packed sequences"):
        check_packing(model, vocab_size=model.config.vocab_size)


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_padding_free_training_matches_padded(command, tiny_model_dir, tmp_path):
    """``--padding-free`` changes how a batch is laid out, not what is learned: 3 steps give
    the padded run's weights to float tolerance (DPO: policy and live reference packed)."""
    from safetensors.torch import load_file

    from preflab.algorithms import dpo, sft
    from tests.sft_data import sft_records, write_jsonl
    from tests.test_rm import preference_records

    if command == "sft":
        data, module = write_jsonl(tmp_path / "d.jsonl", sft_records()), sft
    else:
        data, module = write_jsonl(tmp_path / "d.jsonl", preference_records(32)), dpo
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "3",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32",
              "--eval-fraction", "0.2", "--batch-size", "4"]
    assert module.main([*common, "--output-dir", str(tmp_path / "padded")]) == 0
    assert module.main([*common, "--output-dir", str(tmp_path / "packed"), "--padding-free"]) == 0
    a = load_file(tmp_path / "padded/final/model.safetensors")
    b = load_file(tmp_path / "packed/final/model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4)
