"""``runtime.memory``'s two measurements, on tensors whose bytes are known by hand."""

from __future__ import annotations

import pytest
import torch

from preflab.runtime.memory import range_peaks, saved_tensor_bytes


def forward(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w * x`` saves x (w's gradient needs it; w is the parameter); ``exp`` saves its
    result e; ``sin`` of a view of e saves the view, whose storage is e's: 2 x 4,000 bytes."""
    e = (w * x).exp()
    return e[:500].sin().sum() + e.sum()


@pytest.mark.parametrize("keep", [True, False])
def test_saved_tensor_bytes_counts_storages_once_and_not_the_parameters(keep):
    w = torch.randn(1000, requires_grad=True)
    x = torch.randn(1000)
    with saved_tensor_bytes([w], keep=keep) as saved:
        loss = forward(w, x)
    assert saved["bytes"] == 8000
    if keep:
        loss.backward()
        assert w.grad is not None
    else:
        with pytest.raises(RuntimeError, match="cannot run backward"):
            loss.backward()


def test_saved_tensor_bytes_without_keeping_counts_each_forward():
    """Let go, a forward's storages are freed and their addresses reused by the next: each
    is still counted, as when they are kept."""
    w = torch.randn(1000, requires_grad=True)
    counts = {}
    for keep in (True, False):
        with saved_tensor_bytes([w], keep=keep) as saved:
            for seed in range(3):
                forward(w, torch.randn(1000, generator=torch.Generator().manual_seed(seed)))
        counts[keep] = saved["bytes"]
    assert counts == {True: 3 * 8000, False: 3 * 8000}


def test_range_peaks_see_a_kernels_own_temporaries():
    """logsumexp over a 1000 x 1000 float32 matrix makes exp(x - max), 4,000,000 bytes, inside
    its kernel: no tensor the caller sees. A range that makes 4 MB, frees it and makes 1 MB
    peaks at 4 MB; ranges run twice report their larger run."""
    x = torch.randn(1000, 1000)
    with range_peaks("lse", "blocks") as peaks:
        with torch.profiler.record_function("lse"):
            torch.logsumexp(x, dim=-1)
        for n in (1_000_000, 250_000):
            with torch.profiler.record_function("blocks"):
                a = torch.zeros(n)
                del a
                b = torch.zeros(n // 4)
                del b
    assert 4_000_000 <= peaks["lse"] <= 4_000_000 + 3 * 4000  # + the max and the output
    assert peaks["blocks"] == 4_000_000
