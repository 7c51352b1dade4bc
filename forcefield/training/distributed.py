"""Several training processes through torch.distributed: one process per GPU (or per CPU
share), started by `torchrun` or SLURM's `srun`; gradients are averaged by
DistributedDataParallel, everything else that must agree (validation sums, label counts,
the elapsed time that max_time, the schedule and DeNS read) is reduced here, so every rank
takes every decision from the same numbers and none waits for a collective the others skip.

    torchrun --nproc_per_node=4 -m forcefield train config.yaml --output run/
    srun --ntasks-per-node=4 python -m forcefield train config.yaml --output run/

Backends: NCCL on CUDA (one GPU per local rank), gloo on CPU. Under srun the rendezvous
comes from SLURM's variables (MASTER_ADDR is the first node of the job unless set).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False  # a process group is in use (also for a world of 1 under torchrun)
    device: Optional[torch.device] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _tensor(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float64, device=self.device)

    def sum(self, values: Sequence[float]) -> list:
        """Element-wise sum over ranks (the values themselves without a process group)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = self._tensor(values)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def max(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        t = self._tensor([value])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A reduced copy of a (detached) tensor."""
        if not self.enabled:
            return t
        t = t.detach().clone()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def _slurm_env() -> None:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR from SLURM's variables (srun without torchrun)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST", "localhost")
        try:
            first = subprocess.run(
                ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            first = nodes.split(",")[0]
        os.environ["MASTER_ADDR"] = first
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))


def from_environment(device: torch.device) -> Distributed:
    """The process group described by torchrun's (or SLURM's) variables; a single process
    without them. On CUDA each local rank takes GPU `LOCAL_RANK`."""
    _slurm_env()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return Distributed(rank=rank, world=world, local_rank=local, enabled=True, device=device)


def shutdown(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
