"""Process groups for ``torchrun`` / ``accelerate launch``: the same script, N processes.

When the launcher's environment (``WORLD_SIZE`` > 1) is present, ``setup`` joins the
process group (NCCL on CUDA, gloo on CPU), pins each process to its local GPU and returns
its rank; otherwise it is a single-process no-op. Trainers wrap the trained model with
``wrap_ddp`` (or shard it with ``shard``, FSDP2), shard the example stream by rank, and reduce
logged figures with ``all_reduce_sum`` so every rank logs the same numbers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_joined = False  # whether this process joined a process group (``setup``)


def setup(device_name: str = "auto") -> DistContext:
    global _joined
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _joined = True
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DDP over the processes; a model sharded with ``shard`` (FSDP2) already synchronises its
    gradients and is returned as it is, as is any model in one process."""
    if not ctx.enabled or is_sharded(model):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 (``fully_shard``): each transformer block (the classes in the model's
    ``_no_split_modules``) is its own unit, the embeddings, final norm and head the root's.
    ``model`` is the module whose forward the trainer calls (a wrapper such as the reward
    model's scorer may hold the model).
    Parameters become DTensors sharded over the process group; build the optimizer after."""
    from torch.distributed.fsdp import fully_shard

    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    for block in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``shard`` reached any part of ``model`` (a module, not its parameters: FSDP2
    leaves the root's parameters gathered between a no-grad forward and the next step)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter of a sharded model, or its gradient)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def whole(tensor):
    """A DTensor's full value (a collective when it is sharded or partial); anything else as
    it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Accumulate gradients locally (``enabled=False``) on a DDP or FSDP2 model; a plain model
    has nothing to synchronise."""
    if enabled:
        yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:
        yield


def full_weights(model: torch.nn.Module) -> dict:
    """The full (unsharded) model state dict on rank 0 (other ranks get an empty dict).
    Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))


def optimizer_owner(sharded: dict[str, torch.nn.Module]) -> torch.nn.Module:
    """The module through which an optimizer over sharded models is gathered and scattered:
    the one model, or several (PPO's policy and value) as a ``ModuleDict``, whose parameter
    names then begin with the role."""
    if len(sharded) == 1:
        return next(iter(sharded.values()))
    return torch.nn.ModuleDict(sharded)


def full_optimizer_state(owner: torch.nn.Module, optimizer) -> dict:
    """The optimizer's full state keyed by ``owner``'s parameter names (``optimizer_owner``),
    on rank 0. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(owner, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, weights: dict, optimizer=None,
                    optim_state: dict | None = None) -> None:
    """Scatter full state dicts (as ``full_weights`` and ``full_optimizer_state`` write them,
    read by every rank) into a sharded model (or ``optimizer_owner``) and its optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    if optimizer is not None and optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def even_starts(count: int, size: int, ctx: DistContext, *, even: bool) -> list[int | None]:
    """The batch starts ``0, size, ...`` over ``count`` local examples; with ``even`` (a sharded
    model, whose every forward pass is collective) padded with ``None`` to the largest number
    of batches any rank has: a rank runs a spare batch for each ``None`` and discards it."""
    starts: list[int | None] = list(range(0, count, size))
    if even and ctx.enabled:
        most = int(all_reduce_max(torch.tensor(len(starts)), ctx))
        starts += [None] * (most - len(starts))
    return starts


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    return _all_reduce(value, ctx, dist.ReduceOp.SUM) if ctx.enabled else value


def all_reduce_max(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    return _all_reduce(value, ctx, dist.ReduceOp.MAX) if ctx.enabled else value


def _all_reduce(value: torch.Tensor, ctx: DistContext, op) -> torch.Tensor:
    """A reduced copy of ``value`` on its own device. NCCL reduces only CUDA tensors, so a CPU
    figure (a token count, a stop flag) travels through the process's GPU and back."""
    if dist.get_backend() == "nccl" and value.device.type != "cuda":
        work = value.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        work = value.clone()
    dist.all_reduce(work, op=op)
    return work.to(value.device)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    """Leave the process group together: every rank has finished its collectives before any
    destroys the group."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def joined() -> bool:
    """Whether this process joined a process group (a ``torchrun`` or ``accelerate`` rank)."""
    return _joined


def exit_rank(code: int) -> NoReturn:
    """End this rank with exit status ``code`` at once, without the interpreter's shutdown.

    DDP and FSDP2 keep torch's gloo process group, and its worker threads, alive after
    ``destroy_process_group`` (DDP's reducer and FSDP2's device mesh still hold it). A worker
    that frees a tensor while the interpreter is shutting down must take the GIL, and is then
    unwound through a destructor: the process aborts ("terminate called without an active
    exception", signal 6) after the run has finished and written everything. CI saw it now and
    then in 2-process runs. Skipping the shutdown leaves no window for it. The command line
    calls this for every rank (``preflab.cli.main``); a script of your own that trains under
    torchrun can end with it too. Output is flushed first; the files preflab writes are closed
    by the time a command returns.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing to keep
            stream.flush()
    os._exit(code)
