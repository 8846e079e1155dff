"""Process groups for ``torchrun`` / ``accelerate launch``: the same script, N processes.

When the launcher's environment (``WORLD_SIZE`` > 1) is present, ``setup`` joins the
process group (NCCL on CUDA, gloo on CPU), pins each process to its local GPU and returns
its rank; otherwise it is a single-process no-op. Trainers wrap the trained model with
``wrap_ddp``, shard the example stream by rank, and reduce logged figures with
``all_reduce_sum`` so every rank logs the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def setup(device_name: str = "auto") -> DistContext:
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
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


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
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
