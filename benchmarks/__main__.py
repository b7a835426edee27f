"""Every benchmark, one markdown table per scenario: `python -m benchmarks [--quick] [--only NAME ...]`.

Each scenario is also a command of its own (`python -m benchmarks.NAME --help`). The full-size GPU runs need a
GPU and are skipped without one; their last measured tables live in docs/benchmarks.md.
"""

import argparse
import platform

import psutil
import torch

from . import analysis, app_latency, end_to_end, evaluation, extraction, gpu, gpu_check, memory, quantization, startup

SCENARIOS = {
    "extraction": ("Extraction at the full Q-Former shape", extraction.main, ["--repeats", "5"], ["--repeats", "2"]),
    "end_to_end": ("End to end on the embedded default", end_to_end.main, ["--repeats", "10"], ["--repeats", "3"]),
    "quantization": ("4-bit NF4 on the embedded model", quantization.main, [], ["--size", "60", "--repeats", "2"]),
    "analysis": ("Analysis views, as multiples of one SAM generation", analysis.main, ["--repeats", "5"], ["--repeats", "2"]),
    "app_latency": ("App: request to both answers through gradio_client", app_latency.main, ["--repeats", "10"], ["--repeats", "3"]),
    "startup": ("Start-up, whole processes, against the baseline commit", startup.main, ["--repeats", "7"], ["--repeats", "1"]),
    "evaluation": ("Dataset evaluation through the app, and /compare beside it", evaluation.main, [],
                   ["--samples", "24", "--compares", "3"]),
    "memory": ("Memory model of the full model (GPU)", memory.main, ["--check", "docs/gpu_h100.json"], ["--images", "1", "8"]),
    "gpu": ("Full size on a GPU", gpu.main, [], ["--images", "4", "--new-tokens", "8", "--repeats", "1"]),
    "gpu_check": ("The Space path on a GPU", gpu_check.main, [], ["--new-tokens", "8"]),
}
GPU_ONLY = ("gpu", "gpu_check")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run, not numbers to quote")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=sorted(SCENARIOS, key=list(SCENARIOS).index))
    args = parser.parse_args(argv)
    print(f"# SAM studio benchmarks\n\n{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    for name in args.only:
        title, run, full, quick = SCENARIOS[name]
        print(f"\n## {title}\n", flush=True)
        if name in GPU_ONLY and not torch.cuda.is_available():
            print("No GPU on this machine: skipped (see docs/benchmarks.md for the last full-size run).")
            continue
        run(quick if args.quick else full)


if __name__ == "__main__":
    main()
