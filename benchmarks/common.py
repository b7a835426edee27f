"""Timing helpers shared by the benchmarks: medians of round-robin runs, so that a shared machine's load drifts
over every measured function alike."""

import statistics
import time

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
