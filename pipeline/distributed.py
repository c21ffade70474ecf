"""torchrun / DDP support. Under `torchrun --nproc_per_node N` each rank trains on its slice of
every global batch (so the global batch, and the params, mean the same as in one process),
gradients are all-reduced by DDP, and only rank 0 logs, evaluates and writes files. Sampling
gives shard s to rank s mod N; scoring reads every shard."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of a global batch, concatenated in rank order, with gradients flowing back
    to their owners (the contrastive loss needs the whole batch's negatives, as in one process).
    The identity in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(t))


class NullRun:
    """Stands in for the MLflow run on ranks other than 0: they log nothing."""
    run_id = ""

    def log_metrics(self, *a, **k):
        pass

    def log_artifact(self, *a, **k):
        pass

    def set_tags(self, *a, **k):
        pass


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training-mode statistics are those of the global batch over all torchrun
    ranks, for CPU (gloo) runs: torch's SyncBatchNorm only runs on GPUs. Mean and variance come
    from two differentiable all-reduces (sum, then sum of squared deviations), so gradients flow
    to every rank's inputs as in one process; eval mode is plain BatchNorm."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        shape = (1, -1, 1, 1)
        count = x.numel() // x.shape[1] * dist.get_world_size()
        mean = all_reduce(x.sum((0, 2, 3))) / count
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum((0, 2, 3))) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for a CpuSyncBatchNorm in place, sharing parameters and buffers (the
    caller's reference to the model stays valid, as with nn.SyncBatchNorm.convert_sync_batchnorm)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            sync.running_mean, sync.running_var = child.running_mean, child.running_var
            sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_cpu_sync_batchnorm(child)
    return module
