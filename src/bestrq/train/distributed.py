"""Process-group setup from torchrun's environment; one process = one device."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def require_device(device: str, what: str) -> torch.device:
    """``torch.device(device)``, or a ValueError naming ``what`` if it is no device or one this machine lacks."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{what}: {device!r} is not a device this runs on: cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"{what}={device}, but no CUDA device is available (torch {torch.__version__} is {build})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{what}={device}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def setup(device: str = "auto", timeout_minutes: float = 10.0) -> Context:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun); NCCL on GPUs, gloo on CPU.

    A collective that waits longer than ``timeout_minutes`` for a silent rank fails (and with
    it the job) instead of hanging; a rank that dies is noticed sooner by torchrun, which
    then stops the others.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else require_device(device, "train.device").type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Context(rank, world, local, dev)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
