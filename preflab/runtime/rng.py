"""Seeding and capturing every RNG a run draws from, so a resumed run continues exactly."""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA states as plain types (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_bytes() -> bytes:
    """``get_rng_state`` serialised, for checkpoints and for gathering across processes."""
    buffer = io.BytesIO()
    torch.save(get_rng_state(), buffer)
    return buffer.getvalue()


def set_rng_state_bytes(data: bytes) -> None:
    set_rng_state(torch.load(io.BytesIO(data), weights_only=True))
