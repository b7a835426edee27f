"""Timing helpers shared by the benchmarks: medians of round-robin runs, so that a shared machine's load drifts
over every measured function alike."""

import resource
import statistics
import time
from pathlib import Path

import torch


def synchronize() -> None:
    """Wait for queued GPU work, so wall time covers it (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(function) -> float:
    synchronize()
    start = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - start


def round_robin(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each named function, timed in turn after one warm-up round."""
    times = {name: [] for name in functions}
    for round_index in range(repeats + 1):
        for name, function in functions.items():
            elapsed = seconds(function)
            if round_index:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss would carry over the
    peak of the process that started this one."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
