"""AdamW and the learning-rate schedules every trainer uses."""

from __future__ import annotations

import math

import torch


def build_optimizer(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and norm weights (1-D) get no weight decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
    allocate_state(optimizer)
    return optimizer


def allocate_state(optimizer: torch.optim.AdamW) -> None:
    """Allocate AdamW's moments now, as its first step would (zeros, step 0), before any
    activation exists. Left to the first step, each moment lands in a hole that the step's
    freed activations left in the heap, and the next steps' activations fit around them
    worse: at 20M parameters on CPU that cost about 110 MiB of peak RSS (docs/performance.md).
    The update is unchanged: the first step finds the state it would have made."""
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {
                    "step": torch.tensor(0.0, dtype=scalar),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }


def lr_lambda(kind: str, warmup_steps: int, total_steps: int):
    """Multiplier of the peak learning rate at each step: linear warm-up, then ``kind``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine

    return factor


def build_scheduler(optimizer, *, kind: str, warmup_steps: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, warmup_steps, total_steps))


def warmup_steps_for(warmup_steps: int, warmup_ratio: float, total_steps: int) -> int:
    return warmup_steps if warmup_steps > 0 else int(warmup_ratio * total_steps)
