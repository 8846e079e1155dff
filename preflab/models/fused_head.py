"""Token log-probs straight from the hidden states: the LM head and the log-softmax fused,
chunk by chunk, so the ``[B, T, V]`` logits are never held.

A causal LM's last step, ``logits = head(hidden)``, makes a ``[B, T, V]`` tensor: at a
49,152-token vocabulary, 8 sequences of 512 tokens give 805 MB of float32 logits, more than
a 135M model's weights, and autograd keeps them until backward. Every loss here needs only
one number per position, the log-prob of the observed next token, so ``model_token_logps``
runs the model with its output embedding (``get_output_embeddings()``) swapped for a
function that takes the final hidden states and does, ``chunk`` positions at a time:

    z = head(h) * scale                  # [chunk, V]: the head's own forward (LoRA, bias)
    lse = logsumexp(z)                   # kept: one float32 per position
    logp = z[target] - lse               # the output; z is freed
    entropy = lse - sum(softmax(z) * z)  # optional, no gradient (PPO's entropy)

Backward recomputes each chunk's ``z`` (one more head forward: the price of not keeping the
logits, as in Liger's fused linear cross-entropy, whose gradient is known in forward because
its loss is final; here the log-probs feed a loss not yet computed) and pushes
``g * scale * (onehot(target) - softmax(z))`` back through the head with
``torch.autograd.grad``, to the hidden states and to the head's trainable weights (a tied
embedding, a LoRA adapter on the head) at once. The extra memory is a few ``[chunk, V]``
tensors; ``chunk`` defaults to about 64 MiB of float32 logits.

Only the positions a loss scores (``scored``) go through the head: the prompt's and the
padding's positions make no vocabulary-wide work at all. Other positions' log-probs read 0.

The swap runs inside the model's own forward, so every wrapper around the model (DDP's
hooks, FSDP2's gathering of the head's weights, PEFT) sees an ordinary call. A model whose
forward does something to the logits after the head (Gemma 2's soft-capping, Cohere's
logit scale) would give wrong values: ``fused_head_supported`` checks each model once
against its plain logits, and a model that fails is scored the plain way.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

CHUNK_BYTES = 64 * 2**20
"""float32 logits computed at once: 341 positions at a 49,152-token vocabulary."""


FORWARD_RANGE, BACKWARD_RANGE = "preflab.models.fused_head.forward", "preflab.models.fused_head.backward"
"""The profiler ranges of the fused head's forward and backward: what ``preflab plan``'s
working memory of the head is measured against (``runtime.memory.range_peaks``)."""


def default_chunk(vocab_size: int) -> int:
    """Positions per chunk: ``CHUNK_BYTES`` of float32 logits, at least 16."""
    return max(16, CHUNK_BYTES // (4 * max(1, vocab_size)))


def _profiled(name: str):
    """Run the decorated function in the profiler range ``name`` (free when not profiling)."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with torch.profiler.record_function(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


class _HeadLogps(torch.autograd.Function):
    """``log_softmax(head(hidden) * scale)`` at ``targets``, ``[N]`` float32, chunk by chunk;
    and the entropy of each position's distribution (no gradient) when asked."""

    @staticmethod
    @_profiled(FORWARD_RANGE)
    def forward(ctx, hidden: Tensor, targets: Tensor, head: Callable, scale: float, chunk: int,
                want_entropy: bool, *params: Tensor):
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        entropy = torch.empty_like(out) if want_entropy else out.new_empty(0)
        with torch.no_grad():
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                z = head(hidden[s:e]).float()
                if scale != 1.0:
                    z.mul_(scale)
                lse[s:e] = torch.logsumexp(z, dim=-1)
                out[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lse[s:e]
                if want_entropy:  # H = lse - sum_v p_v z_v
                    p = torch.sub(z, lse[s:e, None]).exp_()
                    entropy[s:e] = lse[s:e] - (p * z).sum(-1)
                del z
        ctx.save_for_backward(hidden, targets, lse, *params)
        ctx.head, ctx.scale, ctx.chunk = head, scale, chunk
        device = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_profiled(BACKWARD_RANGE)
    def backward(ctx, grad_out: Tensor, _grad_entropy: Tensor):
        hidden, targets, lse, *params = ctx.saved_tensors
        need_hidden = ctx.needs_input_grad[0]
        wanted = [i for i, p in enumerate(params) if ctx.needs_input_grad[6 + i]]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_params: list[Tensor | None] = [None] * len(params)
        grad_out = grad_out.float() * ctx.scale  # d logp / d z carries the scale
        enabled, dtype = ctx.autocast
        device = hidden.device.type
        # the forward's autocast state, so the recomputed logits equal the forward's
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled,
                                                  cache_enabled=False):
            for s in range(0, hidden.shape[0], ctx.chunk):
                e = min(s + ctx.chunk, hidden.shape[0])
                h = hidden[s:e].detach().requires_grad_(need_hidden)
                logits = ctx.head(h)
                with torch.no_grad():
                    g = grad_out[s:e, None]
                    # float32 logits: .float() is the tensor itself, so dz is built over
                    # them in place (the head's backward reads only dz, never its output)
                    dz = logits.float()
                    if ctx.scale != 1.0:
                        dz.mul_(ctx.scale)
                    dz.sub_(lse[s:e, None]).exp_().mul_(-g)  # -g * softmax
                    dz.scatter_add_(-1, targets[s:e, None], g)  # + g at the target
                inputs = ([h] if need_hidden else []) + [params[i] for i in wanted]
                grads = torch.autograd.grad(logits, inputs, dz.to(logits.dtype))
                del logits, dz
                if need_hidden:
                    grad_hidden[s:e] = grads[0]
                    grads = grads[1:]
                for i, g_p in zip(wanted, grads):
                    grad_params[i] = g_p if grad_params[i] is None else grad_params[i].add_(g_p)
                # a head weight's gradient is [V, H]: this chunk's goes before the next is made
                grads = g_p = None
        return (grad_hidden, None, None, None, None, None, *grad_params)


def head_token_logps(hidden: Tensor, targets: Tensor, head: Callable, *,
                     params: tuple[Tensor, ...] = (), scale: float = 1.0,
                     chunk: int | None = None, entropy: bool = False,
                     vocab_size: int | None = None) -> tuple[Tensor, Tensor | None]:
    """``(log-probs [N], entropy [N] or None)`` of ``targets [N]`` under
    ``softmax(head(hidden) * scale)``, ``hidden [N, H]``, never holding more than ``chunk``
    positions' logits. ``params``: the head's weights to differentiate (those that require
    grad); the gradient reaches them and ``hidden``."""
    if chunk is None:
        chunk = default_chunk(vocab_size or 0)
    logps, ent = _HeadLogps.apply(hidden, targets, head, float(scale), int(chunk), entropy,
                                  *params)
    return logps, (ent if entropy else None)


def inner_model(model) -> torch.nn.Module:
    """The causal LM inside DDP and PEFT wrappers."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return inner


def output_head(model) -> torch.nn.Module | None:
    """The module that turns hidden states into logits (``lm_head``), or None."""
    inner = inner_model(model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Module) else None


@contextlib.contextmanager
def swapped_head(model, targets: Tensor, scored: Tensor, *, scale: float = 1.0,
                 chunk: int | None = None, entropy: bool = False):
    """Within the block, the model's output head returns token log-probs, not logits.

    ``targets`` ``[B, T-1]`` (the next token of each position), ``scored`` ``[B, T-1]`` bool.
    When the model's forward hands the head the hidden states of its last ``K`` positions,
    the head returns ``[B, K-1]`` float32: column j is the log-prob of
    ``targets[:, T-K+j]``, 0 where ``scored`` is false. Yields a dict that gets
    ``"entropy"`` (``[B, K-1]``, no gradient) when ``entropy`` is asked.
    """
    head = output_head(model)
    if head is None:
        raise ValueError("the model has no output embedding to fuse")
    # the head's forward as the model would call it: an instance-level one (accelerate's
    # hooks set one) is kept and put back, not replaced by the class's
    replaced = head.__dict__.get("forward")
    own_forward = head.forward
    vocab = _vocab_size(model)
    chunk = chunk or default_chunk(vocab)
    side: dict[str, Tensor] = {}

    def fused(hidden_states: Tensor, *args, **kwargs) -> Tensor:
        # the model hands over its last K positions (all T where it ignores logits_to_keep);
        # the last len(targets) of those that predict a token are the ones asked for
        B, K, _ = hidden_states.shape
        cols = min(K - 1, targets.shape[1])
        tgt = targets[:, targets.shape[1] - cols:]
        sc = scored[:, scored.shape[1] - cols:].to(torch.bool)
        h = hidden_states[:, K - 1 - cols : K - 1][sc]  # [M, H]: only the scored positions
        params = tuple(p for p in head.parameters() if p.requires_grad) \
            if torch.is_grad_enabled() else ()
        logps, ent = head_token_logps(h, tgt[sc], own_forward, params=params, scale=scale,
                                      chunk=chunk, entropy=entropy)
        where = (sc,)
        out = torch.zeros(B, cols, dtype=torch.float32, device=h.device).index_put(where, logps)
        if ent is not None:
            side["entropy"] = torch.zeros(B, cols, dtype=torch.float32,
                                          device=h.device).index_put(where, ent)
        return out

    head.forward = fused
    try:
        yield side
    finally:
        if replaced is None:
            del head.forward  # the class's forward again
        else:
            head.forward = replaced


def _vocab_size(model) -> int:
    config = getattr(inner_model(model), "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return int(getattr(config, "vocab_size", 0) or 0)


_SUPPORTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fused_head_supported(model) -> bool:
    """Whether the fused head gives the model's own log-probs: checked once per output head
    on two short random rows (eval mode, no gradient) against ``log_softmax`` of the
    model's plain logits. False for a model with no output embedding, or one whose forward
    changes the logits after the head."""
    head = output_head(model)
    if head is None:
        return False
    known = _SUPPORTED.get(head)
    if known is not None:
        return known
    vocab = _vocab_size(model)
    config = getattr(inner_model(model), "config", None)
    # soft-capping squashes large logits after the head; a random test model's small
    # logits would pass the check below, so it is ruled out by name
    ok = vocab > 1 and getattr(config, "final_logit_softcapping", None) is None
    if ok:
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, 6), generator=gen).to(device)
        scored = torch.ones(2, 5, dtype=torch.bool, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                plain = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                with swapped_head(model, ids[:, 1:], scored):
                    fused = model(input_ids=ids, use_cache=False).logits
        finally:
            model.train(was_training)
        loose = torch.is_autocast_enabled(device.type) or plain.dtype != torch.float32
        ok = fused.shape == plain.shape and torch.allclose(
            fused, plain.float(), atol=5e-2 if loose else 1e-4, rtol=1e-3)
    _SUPPORTED[head] = ok
    return ok
