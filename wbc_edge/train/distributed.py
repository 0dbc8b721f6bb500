"""DistributedDataParallel through `torchrun`: gloo on CPU, nccl on CUDA; rank 0 writes.

`torchrun --nproc_per_node N -m wbc_edge.cli.train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them everything runs in one process. Each rank builds the same seeded global batch list and trains on
its own share (`MimoBatchSampler(rank=, world_size=)`); DDP averages the gradients.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (or a single-process context without one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    log.info("distributed: rank %d of %d on %s", rank, world_size, device)
    return DistContext(rank, world_size, local_rank, device)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.enabled:
        return model
    ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Average BatchNorm running statistics over ranks (each rank updated them on its own batches)."""
    if not ctx.enabled:
        return
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(ctx.world_size)
        else:
            dist.broadcast(buf, src=0)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
