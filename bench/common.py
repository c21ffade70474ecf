"""Shared benchmark helpers: alternate A and B in one process (these machines are noisy) and
report medians and their ratio."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def alternate(a: Callable[[], None], b: Callable[[], None], rounds: int = 5, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of a() and b(), measured alternately A B A B ..."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def hardware() -> str:
    import os
    import platform

    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
