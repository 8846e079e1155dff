"""Token and sequence log-probabilities from a causal LM, the input of every loss.

The shift: logits at position t predict token t + 1, so ``token_logps`` returns ``[B, T-1]``
where column t is ``log p(input_ids[:, t+1] | input_ids[:, :t+1])``. A ``completion_mask``
``[B, T]`` marks the tokens whose log-probs count (the completion, not the prompt or the
padding); its column 0 is dropped (token 0 has no prediction) and the rest aligns with
``token_logps``.

Memory: a vocabulary of 50k to 150k makes ``[B, T, V]`` logits the largest tensor of a step.
The training and reference passes (``model_token_logps``, ``forward_logps``,
``packed_forward_logps``) never make them: the model's head is swapped for the fused one of
``preflab.models.fused_head``, which goes from the final hidden states to each scored token's
log-prob chunk by chunk. ``token_logps`` works on logits someone already has (the plain path,
for a model the fused head does not fit): it upcasts one chunk at a time, and its backward
recomputes each chunk's softmax from the saved (low-precision) logits, so the extra memory is
one float32 chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preflab.models.fused_head import fused_head_supported, inner_model, swapped_head

DEFAULT_CHUNK_SIZE = 1024
"""(batch, position) pairs upcast at once: 1024 x V=150k x 4 bytes ~ 600 MB of float32."""


class _ChunkedTokenLogps(torch.autograd.Function):
    """``log_softmax(logits[:, :-1].float())`` gathered at ``targets``, chunk by chunk.

    Saves the input logits and one float32 log-normaliser per position; backward gives
    ``d/dlogits = g * (onehot(target) - softmax(logits))`` in the dtype of ``logits``: in a
    new tensor, or (``overwrite``) written over the saved logits, chunk by chunk.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, steps: int, overwrite: bool) -> Tensor:
        B, T1 = targets.shape
        out = torch.empty(B, T1, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for s in range(0, T1, steps):
            e = min(s + steps, T1)
            chunk = logits[:, s:e].float()
            lse[:, s:e] = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(-1, targets[:, s:e, None]).squeeze(-1)
            out[:, s:e] = picked - lse[:, s:e]
        ctx.save_for_backward(logits, targets, lse)
        ctx.steps, ctx.overwrite = steps, overwrite
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, targets, lse = ctx.saved_tensors
        T1 = targets.shape[1]
        # each chunk's gradient is built from that chunk's logits alone, so it can replace them
        grad = logits if ctx.overwrite else torch.empty_like(logits)
        grad[:, T1:].zero_()  # the last position predicts nothing
        grad_out = grad_out.float()
        in_place = logits.dtype == torch.float32
        for s in range(0, T1, ctx.steps):
            e = min(s + ctx.steps, T1)
            g = grad_out[:, s:e, None]
            # Built in grad's own slice (float32 logits) or in one float32 chunk: no other
            # [B, chunk, V] temporary is made, so backward's peak is the logits and their grad.
            work = grad[:, s:e] if in_place else torch.empty(
                (*grad.shape[:1], e - s, grad.shape[-1]), dtype=torch.float32, device=grad.device)
            torch.sub(logits[:, s:e], lse[:, s:e, None], out=work)
            work.exp_().mul_(-g)  # -g * softmax
            work.scatter_add_(-1, targets[:, s:e, None], g)  # + g at the target
            if not in_place:
                grad[:, s:e] = work
                del work
        return grad, None, None, None


def token_logps(
    logits: Tensor, input_ids: Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite_logits: bool = False,
) -> Tensor:
    """Per-token log-probs of the observed next tokens, ``[B, T-1]`` float32.

    ``logits`` ``[B, T, V]`` (any float dtype), ``input_ids`` ``[B, T]``. Column t is
    ``log softmax(logits[:, t])[input_ids[:, t+1]]``. The positions are processed in chunks
    of about ``chunk_size`` (batch, position) pairs, so no float32 copy of the whole logits
    tensor is made, in forward or backward. Differentiable with respect to ``logits``.

    ``overwrite_logits``: backward writes the gradient over ``logits`` instead of into a new
    tensor, so its peak holds one ``[B, T, V]`` tensor, not two. Only for logits that
    nothing else reads once backward has run (the forward passes here that make them and
    keep them to themselves); another autograd node that saved them fails loudly, since
    the write bumps their version.
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and input_ids [B, T], got {tuple(logits.shape)} "
            f"and {tuple(input_ids.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = input_ids[:, 1:].long()
    steps = max(1, chunk_size // max(1, logits.shape[0]))  # positions along T per chunk
    return _ChunkedTokenLogps.apply(logits, targets, steps, overwrite_logits)


@dataclass
class SequenceLogps:
    """Completion log-probs per sequence, ``[B]`` each (float32, ``count`` int64)."""

    sum: Tensor
    """Sum of the completion tokens' log-probs (DPO and most direct losses)."""
    mean: Tensor
    """``sum / max(count, 1)`` (IPO, SimPO, ORPO)."""
    count: Tensor
    """Number of completion tokens that were scored."""


def sequence_logps(
    logits: Tensor,
    input_ids: Tensor,
    completion_mask: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite_logits: bool = False,
) -> SequenceLogps:
    """Sum and mean log-prob of the completion tokens of each sequence.

    ``completion_mask`` ``[B, T]`` (bool or 0/1) marks the tokens to score; ``mask[:, 0]`` is
    ignored because token 0 has no prediction. Masked positions contribute exactly 0 (not
    ``0 * x``), so garbage logits at padding cannot leak in as NaN. ``overwrite_logits``: as
    in ``token_logps``.
    """
    logps = token_logps(logits, input_ids, chunk_size=chunk_size,
                        overwrite_logits=overwrite_logits)
    return _sequences(logps, completion_mask[:, 1:].to(torch.bool))


def nll_loss_sum(
    logits: Tensor,
    input_ids: Tensor,
    completion_mask: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """SFT: ``(sum of -log p over completion tokens, number of those tokens)``, both 0-d.

    Returning the sum (not the mean) lets the trainer divide by the token count of the
    whole accumulated batch, so accumulating 8 micro-batches of 1 equals one batch of 8.
    """
    seq = sequence_logps(logits, input_ids, completion_mask, chunk_size=chunk_size)
    return -seq.sum.sum(), seq.count.sum()


def position_ids_from_attention_mask(attention_mask: Tensor) -> Tensor:
    """Positions 0, 1, ... counted over attended tokens only; padding gets 0.

    With LEFT padding the first real token gets position 0, exactly as in the unpadded
    sequence (the model's default ``arange`` would start it at the pad count).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_window(completion_mask: Tensor) -> int:
    """How many of the last positions' logits score every completion token of the batch:
    from the position before the earliest completion token to the end (``T`` when a
    completion starts at column 0 or 1, or there is none)."""
    T = completion_mask.shape[-1]
    columns = completion_mask.to(torch.bool).any(0)
    if not bool(columns.any()):
        return T
    first = int(columns.nonzero()[0])
    return min(T, T - first + 1)


def takes_logits_to_keep(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do):
    looked up on the model inside DDP and PEFT wrappers, once per class."""
    inner = inner_model(model)
    cls = type(inner)
    if cls not in _TAKES_LOGITS_TO_KEEP:
        import inspect

        try:
            _TAKES_LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(inner.forward).parameters
        except (TypeError, ValueError):
            _TAKES_LOGITS_TO_KEEP[cls] = False
    return _TAKES_LOGITS_TO_KEEP[cls]


_TAKES_LOGITS_TO_KEEP: dict[type, bool] = {}


def _forward_kwargs(model, input_ids: Tensor, attention_mask: Tensor | None,
                    position_ids: Tensor | None, keep: int) -> dict:
    """A no-cache forward's arguments: positions from the attention mask when there is one
    (``position_ids_from_attention_mask``), else ``position_ids``; ``logits_to_keep = keep``
    where the model takes it and ``keep`` is short of ``T``."""
    kwargs: dict = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
        position_ids = position_ids_from_attention_mask(attention_mask)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if 0 < keep < input_ids.shape[1] and takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    return kwargs


def lm_logits(model, input_ids: Tensor, attention_mask: Tensor, keep: int) -> Tensor:
    """A causal LM's logits of at least the last ``keep`` positions, ``[B, K, V]``: exactly
    those where the model takes ``logits_to_keep`` (its head then runs on them alone), else
    all ``T``. Positions from ``position_ids_from_attention_mask``; no cache."""
    return model(**_forward_kwargs(model, input_ids, attention_mask, None, keep)).logits


@dataclass
class TokenLogps:
    """Per-token log-probs of a forward pass (``model_token_logps``), ``[B, K-1]`` float32."""

    logps: Tensor
    """Log-prob of each scored token; exactly 0 where a position is not scored."""
    entropy: Tensor | None = None
    """Entropy of each scored position's distribution (no gradient), when asked; else None."""


def model_token_logps(
    model,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    keep: int | None = None,
    scored: Tensor | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk_size: int | None = None,
    fused: bool | None = None,
) -> TokenLogps:
    """Run a causal LM once and take the log-probs of the tokens ``input_ids[:, T-K+1:]``
    under ``softmax(logits / temperature)``, ``[B, K-1]``, ``K = keep`` (default ``T``).

    ``scored`` ``[B, K-1]`` bool: the tokens to score (default all); the others read 0 and
    cost nothing. ``attention_mask``: positions follow it
    (``position_ids_from_attention_mask``); else ``position_ids`` (packed rows) or the
    model's default. The head runs only on the last ``K`` positions where the model takes
    ``logits_to_keep``.

    The log-probs come from the fused head (``preflab.models.fused_head``): no ``[B, K, V]``
    logits are held, in forward or backward. ``fused=None`` uses it wherever
    ``fused_head_supported(model)``; ``False`` computes the full logits and
    ``token_logps`` on them (the reference the fused path is tested against).
    """
    B, T = input_ids.shape
    keep = T if keep is None or not 0 < keep <= T else keep
    if scored is None:
        scored = torch.ones(B, keep - 1, dtype=torch.bool, device=input_ids.device)
    scored = scored.to(torch.bool)
    if scored.shape != (B, keep - 1):
        raise ValueError(f"scored must be [B, keep - 1] = {(B, keep - 1)}, got "
                         f"{tuple(scored.shape)}")
    kwargs = _forward_kwargs(model, input_ids, attention_mask, position_ids, keep)
    if fused is None:
        fused = fused_head_supported(model)
    if fused:
        with swapped_head(model, input_ids[:, T - keep + 1:], scored, scale=1.0 / temperature,
                          chunk=chunk_size, entropy=entropy) as side:
            logps = model(**kwargs).logits
        return TokenLogps(logps, side.get("entropy"))
    logits = model(**kwargs).logits[:, -keep:]
    if temperature != 1.0:
        logits = logits / temperature
    ent = None
    if entropy:
        ent = torch.where(scored, logits_entropy(logits[:, :-1]), 0.0)
    # private logits: backward may write their gradient over them (read above, not after)
    logps = token_logps(logits, input_ids[:, T - keep:],
                        chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                        overwrite_logits=torch.is_grad_enabled())
    return TokenLogps(torch.where(scored, logps, torch.zeros_like(logps)), ent)


@torch.no_grad()
def logits_entropy(logits: Tensor) -> Tensor:
    """Entropy of each position's ``softmax(logits)``, ``[B, T]`` float32, one row at a time
    (a ``[T, V]`` float32 temporary)."""
    out = []
    for row in logits:
        log_p = torch.log_softmax(row.float(), dim=-1)
        out.append(-(log_p.exp() * log_p).sum(-1))
    return torch.stack(out)


def _sequences(logps: Tensor, scored: Tensor) -> SequenceLogps:
    total = torch.where(scored, logps, torch.zeros_like(logps)).sum(-1)
    count = scored.sum(-1)
    return SequenceLogps(sum=total, mean=total / count.clamp(min=1), count=count)


def forward_logps(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    chunk_size: int | None = None,
    keep_logits: bool = False,
) -> tuple[SequenceLogps, Tensor | None]:
    """Run a causal LM once and score its completions: ``(SequenceLogps, None)``.

    Positions follow the attention mask (``position_ids_from_attention_mask``, so left and
    right padding give the same result), and the head runs only on the completion tokens'
    positions (``model_token_logps``): no logits are held, and a long prompt or the padding
    costs no vocabulary-wide work. ``keep_logits``: the model's plain logits are computed
    instead, from the position before the earliest completion token
    (``completion_window``), and returned as ``(SequenceLogps, logits [B, K, V])``.
    """
    T = input_ids.shape[1]
    keep = completion_window(completion_mask)
    if keep_logits:
        logits = lm_logits(model, input_ids, attention_mask, keep)
        start = T - logits.shape[1]
        seq = sequence_logps(logits, input_ids[:, start:], completion_mask[:, start:],
                             chunk_size=chunk_size or DEFAULT_CHUNK_SIZE)
        return seq, logits
    scored = completion_mask[:, T - keep + 1:].to(torch.bool)
    tokens = model_token_logps(model, input_ids, attention_mask=attention_mask, keep=keep,
                               scored=scored, chunk_size=chunk_size)
    return _sequences(tokens.logps, scored), None


def pack(input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> dict:
    """Padding-free layout: the rows' attended tokens packed into as few rows as fit.

    Rows are placed first-fit, longest first, into bins as long as the longest row, so no bin
    is longer than the padded batch: attention, quadratic in a bin's length, costs at most
    what the padded batch costs, and the padding left is what the bins do not fill. Positions
    restart at 0 for each packed row, so attention stays within it: transformers builds a
    block-diagonal causal mask from restarting positions when no attention mask is given,
    and flash attention reads them as sequence boundaries. A bin's unfilled tail is filled
    with copies of the first token at positions 0, 1, ...: a sequence of its own, never
    scored.

    Returns ``input_ids`` and ``position_ids`` ``[bins, cap]``, ``completion_mask`` ``[bins,
    cap]`` with each packed row's first token unscored (it has no prediction within its row),
    ``row_of`` ``[bins, cap]`` (each token's original row; -1 in the fill) and ``rows``.
    """
    keep = attention_mask.to(torch.bool)
    lengths = keep.sum(-1).tolist()
    if min(lengths) == 0:
        raise ValueError("every row needs at least one attended token")
    cap = max(lengths)
    bins: list[list[int]] = []
    used: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        for b, filled in enumerate(used):
            if filled + lengths[row] <= cap:
                bins[b].append(row)
                used[b] += lengths[row]
                break
        else:
            bins.append([row])
            used.append(lengths[row])
    device = input_ids.device
    ids = torch.full((len(bins), cap), int(input_ids[keep][0]), dtype=input_ids.dtype,
                     device=device)
    positions = torch.zeros((len(bins), cap), dtype=torch.long, device=device)
    scored = torch.zeros((len(bins), cap), dtype=torch.bool, device=device)
    row_of = torch.full((len(bins), cap), -1, dtype=torch.long, device=device)
    completion = completion_mask.to(torch.bool)
    for b, members in enumerate(bins):
        at = 0
        for row in members:
            n = lengths[row]
            ids[b, at : at + n] = input_ids[row][keep[row]]
            positions[b, at : at + n] = torch.arange(n, device=device)
            scored[b, at : at + n] = completion[row][keep[row]]
            scored[b, at] = False  # no prediction for a packed row's first token
            row_of[b, at : at + n] = row
            at += n
        positions[b, at:] = torch.arange(cap - at, device=device)  # the fill: its own sequence
    return {"input_ids": ids, "position_ids": positions, "completion_mask": scored,
            "row_of": row_of, "rows": len(lengths)}


def packed_sequence_logps(logits: Tensor, packed: dict, *,
                          chunk_size: int = DEFAULT_CHUNK_SIZE,
                          overwrite_logits: bool = False) -> SequenceLogps:
    """``sequence_logps`` for packed rows (``pack``) from their logits: per original row,
    ``[rows]``."""
    logps = token_logps(logits, packed["input_ids"], chunk_size=chunk_size,
                        overwrite_logits=overwrite_logits)  # [bins, cap-1]
    return _per_row(logps, packed)


def _per_row(logps: Tensor, packed: dict) -> SequenceLogps:
    """Packed token log-probs ``[bins, cap-1]`` summed back per original row."""
    mask = packed["completion_mask"][:, 1:]
    row_of = packed["row_of"][:, 1:].clamp(min=0)  # the fill is never scored
    values = torch.where(mask, logps, torch.zeros_like(logps)).reshape(-1)
    total = torch.zeros(packed["rows"], dtype=values.dtype, device=values.device)
    total = total.index_add(0, row_of.reshape(-1), values)
    count = torch.zeros(packed["rows"], dtype=torch.long, device=values.device)
    count = count.index_add(0, row_of.reshape(-1), mask.reshape(-1).long())
    return SequenceLogps(sum=total, mean=total / count.clamp(min=1), count=count)


def packed_forward_logps(model, input_ids: Tensor, attention_mask: Tensor,
                         completion_mask: Tensor, *,
                         chunk_size: int | None = None) -> SequenceLogps:
    """``forward_logps`` with little padding: the rows packed into as few rows as fit
    (``pack``), one forward with restarting ``position_ids`` and no attention mask, the
    log-probs summed back per original row. Equal to the padded forward to float tolerance
    wherever the model's attention honours packed positions (``check_packing`` tests
    that)."""
    packed = pack(input_ids, attention_mask, completion_mask)
    tokens = model_token_logps(model, packed["input_ids"], position_ids=packed["position_ids"],
                               scored=packed["completion_mask"][:, 1:], chunk_size=chunk_size)
    return _per_row(tokens.logps, packed)


@torch.no_grad()
def check_packing(model, *, vocab_size: int, atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless sequences packed into one row (``pack``: lengths 8, 5
    and 3 make the rows [8] and [5 + 3]) give the log-probs they give apart: the model's
    attention must not reach across a packed boundary (attention implementations that
    ignore position ids would)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (3, 8), generator=gen).to(device)
    starts = torch.tensor([[0], [3], [5]])
    mask = (torch.arange(8).unsqueeze(0) >= starts).long().to(device)
    scored = (torch.arange(8).unsqueeze(0) > starts).long().to(device)  # all but the first
    was_training = model.training
    model.eval()
    try:
        apart, _ = forward_logps(model, ids, mask, scored)
        together = packed_forward_logps(model, ids, mask, scored)
    finally:
        model.train(was_training)
    if not torch.allclose(apart.sum.float(), together.sum.float(), atol=atol, rtol=1e-3):
        raise ValueError(
            "this model's attention reaches across packed sequences (its log-probs change when "
            f"sequences share a row: {apart.sum.tolist()} apart, {together.sum.tolist()} "
            "packed); --padding-free needs an attention that honours restarting position ids "
            "(transformers' sdpa, eager or flash attention on Llama, Qwen, Mistral and the "
            "like); train without --padding-free")


def _rows(seq: SequenceLogps, rows: slice) -> SequenceLogps:
    return SequenceLogps(sum=seq.sum[rows], mean=seq.mean[rows], count=seq.count[rows])


def concatenated_forward(
    model, batch: dict, *, chunk_size: int | None = None, padding_free: bool = False
) -> tuple[SequenceLogps, SequenceLogps]:
    """Chosen and rejected through the model in ONE forward: ``(chosen, rejected)``.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``completion_mask`` of shape
    ``[2B, T]`` with rows ``:B`` the chosen and rows ``B:`` the rejected completions, and
    ``batch_size = B``. ``padding_free``: the 2B rows packed into one (``pack``).
    """
    n = int(batch["batch_size"])
    if batch["input_ids"].shape[0] != 2 * n:
        raise ValueError(
            f"concatenated batch has {batch['input_ids'].shape[0]} rows; expected "
            f"2 * batch_size = {2 * n}"
        )
    if padding_free:
        seq = packed_forward_logps(model, batch["input_ids"], batch["attention_mask"],
                                   batch["completion_mask"], chunk_size=chunk_size)
    else:
        seq, _ = forward_logps(model, batch["input_ids"], batch["attention_mask"],
                               batch["completion_mask"], chunk_size=chunk_size)
    return _rows(seq, slice(0, n)), _rows(seq, slice(n, 2 * n))
