"""Process-group setup from torchrun's environment; one process = one device."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


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
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world, timeout=timeout,
                                store=_attempt_store(world, timeout))
    return Context(rank, world, local, dev)


def _attempt_store(world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun's store, seen through a prefix of this attempt, when torchrun restarts a one-node job.

    torchrun (c10d rendezvous, the default of ``--standalone``) keeps one store for the whole job
    and the workers of each attempt register their addresses in it under the same keys: a
    restarted rank can read a dead rank's address from the attempt before and fail with
    "connectFullMesh failed ... Connection refused" (NCCL: a wrong unique id). On one node the
    restart count is the same for every worker, so it keys the attempt. Across nodes it is not
    (a node restarted for another node's failure keeps its count): there, say what avoids it.
    None (the default env:// set-up) outside torchrun or when torchrun gives each attempt its own store.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
            log.warning("torchrun shares one store between the attempts of this %s-node job: a restart can "
                        "read the previous attempt's addresses and fail to connect; set "
                        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun on every node",
                        os.environ["GROUP_WORLD_SIZE"])
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=world,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"bestrq/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_gather_object(obj: object) -> list:
    """Every rank's ``obj`` (picklable, small), in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
