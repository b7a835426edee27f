"""What 4-bit NF4 costs on the embedded model: held-out MiniLINK scores, and the speed and memory of a compare and
an Explain, full precision next to NF4 in one run.

Scores: the model card's evaluation (the held-out test split, greedy, 24 new tokens; MiniLINK version 2 by default,
as `python -m sam_core.evaluate --model MODEL --size 600 --quantization none|4bit`) in each precision on the
same samples: per task and mode the accuracy in both, the paired 95% bootstrap interval of NF4 − fp32 (the target:
0 inside every one), CIDEr in both, and how many answers are word for word the same.
Speed: a compare (both 20-token answers in one batch) and an Explain (what the app's Explain button computes: one
compare-mode pass and every view and attribution; drawing the figures is left out, it does not depend on the
precision and only adds noise) on 4 MiniLINK images, timed round-robin in one process, medians of `--repeats`. Memory: the weights as loaded (`ModelInfo.weights_mb`), and the process's
resident memory after loading and at its peak over one compare and one Explain, each precision in its own process.

    python -m benchmarks.quantization [--model checkpoints/minilink] [--size 600] [--repeats 5] [--threads 1]
"""

import argparse
import json
import subprocess
import sys

import numpy as np
import psutil
import torch

from sam_core.data import TASKS, MiniLinkConfig, make_sample
from sam_core.evaluate import answer_is_correct, open_eval_dataset, predict
from sam_core.generation import SamPipeline
from sam_core.loading import load_sam
from sam_core.metrics import bootstrap_interval, score_captions
from visualization import explain

from .common import peak_rss_mb, round_robin

PRECISIONS = {"fp32": "none", "nf4": "4bit"}
NUM_IMAGES, ANSWER_TOKENS = 4, 20
MODES = ("sam", "baseline")


def score_rows(model: str | None, size: int, version: int) -> list[dict]:
    """One row per (task, mode): accuracy and CIDEr in both precisions and the paired NF4 − fp32 interval."""
    dataset = open_eval_dataset("minilink", size, None, version=version)
    predictions = {name: predict(load_sam(model, quantization=q, device="cpu"), dataset, max_new_tokens=24)
                   for name, q in PRECISIONS.items()}
    full, nf4 = predictions["fp32"], predictions["nf4"]
    assert [p.id for p in full] == [p.id for p in nf4]
    rows = []
    for task in sorted({p.task for p in full}, key=TASKS.index):
        index = [i for i, p in enumerate(full) if p.task == task]
        for mode in MODES:
            correct = {name: np.array([100.0 * answer_is_correct(predictions[name][i], mode) for i in index])
                       for name in PRECISIONS}
            cider = {name: score_captions([predictions[name][i].answers[mode] for i in index],
                                          [predictions[name][i].reference for i in index], meteor=False).cider
                     for name in PRECISIONS}
            low, high = bootstrap_interval(correct["nf4"] - correct["fp32"])
            rows.append({
                "task": task, "mode": mode, "n": len(index),
                "accuracy_fp32": correct["fp32"].mean(), "accuracy_nf4": correct["nf4"].mean(),
                "difference": correct["nf4"].mean() - correct["fp32"].mean(), "difference_ci": (low, high),
                "cider_fp32": cider["fp32"], "cider_nf4": cider["nf4"],
                "identical": sum(full[i].answers[mode] == nf4[i].answers[mode] for i in index),
            })
    return rows


def score_table(rows: list[dict]) -> str:
    lines = [
        "| task | mode | n | accuracy fp32 | accuracy NF4 | NF4 − fp32 (paired 95% CI) | 0 inside | CIDEr fp32 | CIDEr NF4 "
        "| identical answers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["difference_ci"]
        lines.append(
            f"| {r['task']} | {r['mode']} | {r['n']} | {r['accuracy_fp32']:.1f}% | {r['accuracy_nf4']:.1f}% "
            f"| {r['difference']:+.1f} ({low:+.1f} to {high:+.1f}) | {'yes' if low <= 0 <= high else 'NO'} "
            f"| {r['cider_fp32']:.1f} | {r['cider_nf4']:.1f} | {r['identical']}/{r['n']} |"
        )
    return "\n".join(lines)


def request(version: int):
    sample = make_sample(2, 0, MiniLinkConfig(min_images=NUM_IMAGES, max_images=NUM_IMAGES, tasks=("group",), version=version))
    return sample.images, sample.instruction


def runs(pipeline: SamPipeline, version: int) -> dict:
    """The two requests timed: a compare, and an Explain's computation."""
    images, prompt = request(version)
    length = {"max_new_tokens": ANSWER_TOKENS, "min_new_tokens": ANSWER_TOKENS}
    return {"compare": lambda: pipeline.generate(images, prompt, mode="compare", **length),
            "explain": lambda: explain(pipeline, images, prompt, **length)}


def memory(model: str | None, precision: str, threads: int, version: int) -> dict:
    """In this process (started for it): resident memory after loading, and its peak over one of each request."""
    torch.set_num_threads(threads)
    loaded = load_sam(model, quantization=PRECISIONS[precision], device="cpu")
    rss_loaded = psutil.Process().memory_info().rss / 2**20
    for function in runs(SamPipeline(loaded), version).values():
        function()
    return {"weights_mb": loaded.info.weights_mb, "rss_loaded_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(),
            "precision_in_use": loaded.info.precision}


def speed_table(seconds: dict, memories: dict) -> str:
    lines = ["| precision | weights (MB) | compare (ms) | Explain (ms) | RSS loaded / peak (MB) |", "|---|---|---|---|---|"]
    for name in PRECISIONS:
        m = memories[name]
        lines.append(f"| {m['precision_in_use']} | {m['weights_mb']:.2f} | {seconds[name, 'compare'] * 1e3:.0f} "
                     f"| {seconds[name, 'explain'] * 1e3:.0f} | {m['rss_loaded_mb']:.0f} / {m['peak_rss_mb']:.0f} |")
    ratio = {kind: seconds["nf4", kind] / seconds["fp32", kind] for kind in ("compare", "explain")}
    memory_ratio = memories["nf4"]["weights_mb"] / memories["fp32"]["weights_mb"]
    lines.append(f"| NF4 ÷ fp32 | {memory_ratio:.2f}× | {ratio['compare']:.2f}× | {ratio['explain']:.2f}× | |")
    return "\n".join(lines)


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a checkpoint directory (default: the embedded model)")
    parser.add_argument("--size", type=int, default=600, help="held-out MiniLINK test samples (the card's 600)")
    parser.add_argument("--version", type=int, default=MiniLinkConfig.version, choices=(1, 2), help="MiniLINK version (the card's: 2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the app's default for the embedded model)")
    parser.add_argument("--skip-scores", action="store_true", help="speed and memory only")
    parser.add_argument("--one", choices=sorted(PRECISIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(memory(args.model, args.one, args.threads, args.version)))
        return
    torch.set_num_threads(args.threads)
    model = args.model or "the embedded model"
    print(f"{model}, torch {torch.__version__}, {args.threads} thread(s), {psutil.cpu_count()} CPU cores\n")
    if not args.skip_scores:
        print(f"Held-out MiniLINK test split (version {args.version}), first {args.size} samples, greedy, 24 new tokens:\n")
        print(score_table(score_rows(args.model, args.size, args.version)) + "\n")

    pipelines = {name: SamPipeline(load_sam(args.model, quantization=q, device="cpu")) for name, q in PRECISIONS.items()}
    functions = {(name, kind): function for name, pipeline in pipelines.items() for kind, function in runs(pipeline, args.version).items()}
    seconds = round_robin(functions, args.repeats)
    memories = {}
    for name in PRECISIONS:
        command = [sys.executable, "-m", "benchmarks.quantization", "--one", name, "--threads", str(args.threads)]
        command += ["--model", args.model] if args.model else []
        command += ["--version", str(args.version)]
        memories[name] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    print(f"{NUM_IMAGES} MiniLINK images, {ANSWER_TOKENS}-token answers, median of {args.repeats} round-robin runs; "
          "memory: each precision in its own process:\n")
    print(speed_table(seconds, memories))


if __name__ == "__main__":
    main()
