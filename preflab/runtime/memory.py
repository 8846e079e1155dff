"""Memory figures (docs/architecture.md, contract: memory figures).

``peak_rss_bytes`` is the process's high-water resident set (each compared run is its own
process, so the figure is its own). ``role_tensor_bytes`` counts the bytes a model role
holds in tensors, split into ``params``, ``grads`` and ``optimizer`` state; a tensor shared
between roles (a frozen base under several adapters) is counted once, by the first role
that reports it, when the same ``seen`` set is passed for all roles.

Two measurements that ``preflab plan``'s estimates are checked against (tests/test_plan.py,
benchmarks/plan_activations.py): ``saved_tensor_bytes``, what autograd keeps for backward,
and ``range_peaks``, the most the CPU allocator holds during a named range of code beyond
what it held as the range began.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import weakref
from collections.abc import Iterable, Iterator

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


@contextlib.contextmanager
def saved_tensor_bytes(exclude: Iterable[torch.Tensor] = (), *,
                       keep: bool = True) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward within the block: ``{"bytes": n}``.

    Storages are counted, each once (a view keeps its whole storage alive), those of
    ``exclude`` (the parameters) left out. ``keep=False`` lets each saved tensor go as soon
    as it is counted, so a large model's forward is measured in little memory; that graph
    cannot run backward. A storage freed and its address reused counts again, as it should.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    live: dict[int, weakref.ref] = {}  # storages counted and still alive, by address
    out = {"bytes": 0}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in skip and key not in live:
            out["bytes"] += storage.nbytes()
            live[key] = weakref.ref(storage, lambda _, key=key: live.pop(key, None))
        return t if keep else None

    def unpack(t):
        if t is None:
            raise RuntimeError("saved_tensor_bytes(keep=False) let the saved tensors go: this "
                               "graph cannot run backward")
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield out


@contextlib.contextmanager
def range_peaks(*names: str) -> Iterator[dict[str, int]]:
    """Within the block, record every CPU allocation and free (``torch.profiler`` with
    ``profile_memory``; kernels' own temporaries included); on exit, fill the yielded dict with,
    for each of ``names`` (a ``torch.profiler.record_function`` range), the most bytes held
    during one run of it beyond what was held as that run began (the largest over its runs).
    """
    from torch.profiler import ProfilerActivity, profile

    peaks: dict[str, int] = {}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield peaks
    events, spans = [], []

    def walk(nodes):
        for node in nodes:
            fields = node.extra_fields
            if isinstance(fields, torch._C._profiler._ExtraFields_Allocation):
                if fields.device.type == "cpu":
                    events.append((node.start_time_ns, fields.alloc_size))
            elif node.name in names:
                spans.append((node.name, node.start_time_ns, node.end_time_ns))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    events.sort(key=lambda e: e[0])
    for name, start, end in spans:
        held = sum(n for t, n in events if t < start)
        now = peak = held
        for t, n in events:
            if start <= t <= end:
                now += n
                peak = max(peak, now)
        peaks[name] = max(peaks.get(name, 0), peak - held)
