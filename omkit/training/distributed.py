"""DDP plumbing (``torchrun``): this process's rank and world size, the process
group, and the few collectives the trainer needs. With one process every
function is a no-op or returns its local value."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module started the process group (and ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_environment() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as torchrun sets them (0, 1, 0 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def start(device_name: str) -> Processes:
    """This process's place; under torchrun the process group is started (NCCL
    for CUDA, else gloo) unless the caller already did."""
    rank, world_size, local_rank = from_environment()
    owns = False
    if world_size > 1 and not torch.distributed.is_initialized():
        name = device_name.strip().lower()
        on_gpu = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
        if on_gpu:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend="nccl" if on_gpu else "gloo")
        owns = True
    return Processes(rank, world_size, local_rank, owns)


def stop(processes: Processes) -> None:
    """End the process group if :func:`start` began it."""
    if processes.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(processes: Processes) -> None:
    if processes.distributed:
        torch.distributed.barrier()


def gather(processes: Processes, local) -> list:
    """Every process's ``local`` (any picklable object), in rank order."""
    if not processes.distributed:
        return [local]
    gathered = [None] * processes.world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def mean(processes: Processes, values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The mean of ``values`` over processes (NCCL needs the tensor on the GPU)."""
    if not processes.distributed:
        return values
    values = values.to(device)
    torch.distributed.all_reduce(values)
    return values.cpu() / processes.world_size


def main_decides(processes: Processes, flag: bool, device: torch.device) -> bool:
    """The main process's ``flag`` on every process (wall clocks differ between
    processes, so a time budget is the main process's decision)."""
    if not processes.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.broadcast(tensor, 0)
    return bool(tensor.item())


def any_process(processes: Processes, flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (a stop signal may reach only some)."""
    if not processes.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


def sync_buffers(processes: Processes, model: nn.Module) -> None:
    """DDP copies rank 0's buffers (BatchNorm running statistics) to every
    process at the start of each forward, so after the last step they differ
    by one local update; copy them once more so that every process ends with
    the model rank 0 saves."""
    if processes.distributed:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def consistency_report(processes: Processes, model: nn.Module, first_pool: np.ndarray) -> dict:
    """Per-process digests of the final weights (identical under DDP) and of
    each process's first patch pool (different: each samples its own)."""
    from .checkpoints import weights_digest

    sync_buffers(processes, model)
    params = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
    local = {
        "weights_sha256": weights_digest(model),
        "parameters_sha256": params,
        "patch_pool_sha256": hashlib.sha256(np.ascontiguousarray(first_pool).tobytes()).hexdigest()[:16],
    }
    gathered = gather(processes, local)
    return {"processes": gathered, "weights_identical": len({g["weights_sha256"] for g in gathered}) == 1}
