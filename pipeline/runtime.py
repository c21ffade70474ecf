"""Where and how a stage runs: device, threads, cuDNN/TF32 switches, DDP wrapping. Shared by every
stage (training, sampling, scoring), so it lives apart from the training code."""
from __future__ import annotations

import os

import torch
from torch import nn

from . import distributed
from .errors import CemError
from .params import DeviceParams, RuntimeParams
from .timing import phase


def setup_runtime(runtime: DeviceParams) -> torch.device:
    with phase("runtime"):
        return _setup_runtime(runtime)


def _setup_runtime(runtime: DeviceParams) -> torch.device:
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise CemError("runtime.device is 'cuda' but no CUDA device is available")
    use_cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    w = distributed.init("cuda" if use_cuda else "cpu")
    if runtime.deterministic and use_cuda:  # cuBLAS needs a fixed workspace for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic(runtime.deterministic)
    # ... without NaN-filling every fresh tensor (its default under deterministic mode; costs time, adds nothing)
    torch.utils.deterministic.fill_uninitialized_memory = False
    if use_cuda:
        torch.backends.cudnn.benchmark = not runtime.deterministic
        torch.backends.cudnn.deterministic = runtime.deterministic
        torch.backends.cuda.matmul.allow_tf32 = not runtime.deterministic
        torch.backends.cudnn.allow_tf32 = not runtime.deterministic
    device = torch.device(f"cuda:{w.local_rank}" if use_cuda else "cpu")
    if use_cuda:  # the CUDA context is created here, inside this phase, rather than by whatever comes first
        torch.zeros(1, device=device)
    return device


def set_deterministic(mode: bool) -> None:
    """`torch.use_deterministic_algorithms(mode, warn_only=True)` without its import of torch._inductor
    (to set the compiler's own flag): ~1.7 s of every stage process's start-up, for a compiler most stages
    never use (docs/performance.md). `maybe_compile` sets the compiler's flag when it is used. A torch
    without the private switch gets the public call (slower, same effect)."""
    switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if switch is None:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        switch(mode, warn_only=True)


CPU_BF16_FLAGS = {"amx_bf16": "AMX-bf16", "avx512_bf16": "AVX-512-bf16"}
"""CPU flags with native bf16 arithmetic, in order of preference. Measured on the project's machines:
AMX-bf16 (Intel Sapphire Rapids+) bf16 matmul ~6x fp32, a small CNN 2.9x under autocast;
AVX-512-bf16 (AMD Zen 4) the supervised AT step 1.8x; neither (AMD Zen 3, AVX2) bf16 ~500x slower."""

AVX512_BF16_VENDORS = {"AuthenticAMD"}
"""AVX-512-bf16 alone pays on AMD only: on an Intel Xeon (Emerald Rapids) whose AMX the hypervisor does
not expose, the supervised AT step ran 0.84x as fast under bf16 (`python -m bench.cpu_amp`, 2026-12-07),
so there it counts as no native bf16."""


def cpu_bf16_flag() -> str | None:
    """The first of CPU_BF16_FLAGS that /proc/cpuinfo lists and that pays on this vendor, else None."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    flags = {flag for line in lines if line.startswith("flags") for flag in line.split()}
    vendors = {line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id") and ":" in line}
    return next((flag for flag in CPU_BF16_FLAGS if flag in flags
                 and (flag != "avx512_bf16" or vendors & AVX512_BF16_VENDORS)), None)


def amp_decision(runtime: RuntimeParams, device: torch.device) -> tuple[bool, str]:
    """Whether this stage runs its forward/backward passes under bf16 autocast, and why (logged to
    MLflow). `auto` decides from the hardware (never from a timing, which would make the same params
    give different outputs on the same machine)."""
    if runtime.amp is False:
        return False, "fp32 (runtime.amp: false)"
    if runtime.amp is True:
        return True, f"bf16 autocast on {device.type} (runtime.amp: true)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, "bf16 autocast (auto: CUDA device with bf16)"
        return False, "fp32 (auto: this GPU has no bf16)"
    flag = cpu_bf16_flag()
    if flag is not None:
        return True, f"bf16 autocast (auto: CPU with {CPU_BF16_FLAGS[flag]})"
    return False, ("fp32 (auto: this CPU has neither AMX-bf16 nor AMD's AVX-512-bf16, where bf16 is slower than "
                   "fp32)")


def autocast(device, enabled: bool):
    """bf16 autocast for the model's forward/backward; weights stay fp32, and the losses, log-sum-exps
    and normalisations are computed on `.float()` outputs."""
    device_type = torch.device(device).type if device is not None else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


COMPILE_CACHE = ".cache/torch-compile"
"""Where compiled kernels and graphs are kept between processes (relative to the project root, where
dvc runs every stage): each stage is a new process, and without a shared on-disk cache each one would
compile from cold. Ignored by git and DVC. `TORCHINDUCTOR_CACHE_DIR`, when set, wins."""


def maybe_compile(model: nn.Module, runtime: RuntimeParams) -> nn.Module:
    """`runtime.compile`: the module that attacks, training forwards and samplers call, compiled by
    torch.compile (parameters shared with `model`, whose state_dict is what gets saved), its kernels
    cached on disk in COMPILE_CACHE. Measured on a 2-core AMD CPU: 0.92-0.94x (slower), hence off in the
    CPU profile; on in the GPU profiles where it pays (docs/performance.md)."""
    if not runtime.compile:
        return model
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.abspath(COMPILE_CACHE))
    import torch._inductor.config as inductor_config  # what torch.use_deterministic_algorithms would set
    inductor_config.deterministic = torch.are_deterministic_algorithms_enabled()
    # dynamic=False: every loop here runs fixed shapes; without it a second batch size (the contrastive
    # update's 4 views vs the attack's 2) would turn the batch dimension symbolic for every later graph
    return torch.compile(model, dynamic=False)


def wrap_ddp(model: nn.Module, runtime: RuntimeParams, device: torch.device) -> nn.Module:
    """The module the training loss goes through: DDP under torchrun, else the model itself."""
    if not distributed.world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    if runtime.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif runtime.sync_bn:  # torch's SyncBatchNorm refuses CPU tensors
        model = distributed.convert_cpu_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
