"""Memory figures (docs/architecture.md, contract: memory figures).

``peak_rss_bytes`` is the process's high-water resident set (each compared run is its own
process, so the figure is its own). ``role_tensor_bytes`` counts the bytes a model role
holds in tensors, split into ``params``, ``grads`` and ``optimizer`` state; a tensor shared
between roles (a frozen base under several adapters) is counted once, by the first role
that reports it, when the same ``seen`` set is passed for all roles.
"""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def cuda_max_allocated_bytes() -> int | None:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def role_tensor_bytes(
    params: list[torch.nn.Parameter] | torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    seen: set[int] | None = None,
) -> dict[str, int]:
    """Bytes in parameters, gradients and optimizer state for one role.

    ``params`` is a module or a list of parameters; parameters whose storage is in
    ``seen`` are skipped (and new ones added to it), so shared weights count once. A sharded
    (FSDP2) parameter counts this process's shard.
    """
    from preflab.runtime.distributed import local

    if isinstance(params, torch.nn.Module):
        params = list(params.parameters())
    seen = set() if seen is None else seen
    out = {"params": 0, "grads": 0, "optimizer": 0}
    owned = []
    for p in params:
        key = local(p).untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        owned.append(p)
        out["params"] += _nbytes(local(p))
        if p.grad is not None:
            out["grads"] += _nbytes(local(p.grad))
    if optimizer is not None:
        owned_ids = {id(p) for p in owned}
        for p, state in optimizer.state.items():
            if id(p) not in owned_ids:
                continue
            for value in state.values():
                if torch.is_tensor(value) and value.numel() > 1:
                    out["optimizer"] += _nbytes(local(value))
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def memory_summary(roles: dict[str, dict[str, int]]) -> dict:
    """The ``summary.json`` memory block: peak RSS, CUDA peak (if any), bytes per role."""
    out: dict = {"peak_rss_bytes": peak_rss_bytes(), "tensor_bytes": roles}
    cuda = cuda_max_allocated_bytes()
    if cuda is not None:
        out["cuda_max_allocated_bytes"] = cuda
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
