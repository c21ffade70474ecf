"""torchrun / DDP support. Under `torchrun --nproc_per_node N` each rank trains on its slice of
every global batch (so the global batch, and the params, mean the same as in one process),
gradients are all-reduced by DDP, and only rank 0 logs, evaluates and writes files. Sampling
gives shard s to rank s mod N; scoring reads every shard."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    return World(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                 int(os.environ.get("LOCAL_RANK", "0")))


def init(device_type: str) -> World:
    """Join the process group when started by torchrun (gloo on CPU, nccl on CUDA)."""
    w = world()
    if w.distributed and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return w


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class NullRun:
    """Stands in for the MLflow run on ranks other than 0: they log nothing."""
    run_id = ""

    def log_metrics(self, *a, **k):
        pass

    def log_artifact(self, *a, **k):
        pass

    def set_tags(self, *a, **k):
        pass
