"""End to end on the embedded default: a 4-image request, from PIL images to text, per precision and thread count.

Each configuration runs in its own process (so peak RSS is its own): time to first token (processor, extraction,
prefill, one token) for SAM and the baseline, each answer at 20 tokens (`min_new_tokens` holds the length),
decode tokens/s, and the app's comparison (one shared extraction, both answers in one batch): time to the first
token of both and to both whole answers, and the same with the two answers decoded in turn. Everything is timed
round-robin in the same process; medians of `--repeats`.

    python -m benchmarks.end_to_end [--repeats 10] [--precisions fp32 nf4] [--threads 1 2]
"""

import argparse
import json
import subprocess
import sys

import psutil
import torch

from sam_core.data import MiniLinkConfig, make_sample
from sam_core.generation import SamPipeline, generate_modes, generation_kwargs
from sam_core.loading import load_sam

from .common import peak_rss_mb, round_robin

NUM_IMAGES, ANSWER_TOKENS = 4, 20
QUANTIZATION = {"fp32": "none", "nf4": "4bit"}


def measure(precision: str, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    pipeline = SamPipeline(load_sam(quantization=QUANTIZATION[precision], device="cpu"))
    rss_loaded = psutil.Process().memory_info().rss
    sample = make_sample(2, 0, MiniLinkConfig(min_images=NUM_IMAGES, max_images=NUM_IMAGES, tasks=("group",)))
    images, prompt = sample.images, sample.instruction
    length = {"max_new_tokens": ANSWER_TOKENS, "min_new_tokens": ANSWER_TOKENS}

    def answer(mode: str, tokens: dict):
        return lambda: pipeline.generate(images, prompt, mode=mode, **tokens)

    def compare_in_turn():
        """The comparison with one extraction but the two answers decoded one after the other."""
        inputs = pipeline.prepare(images, prompt)
        for visual in pipeline.extract(inputs, "compare").values():
            generate_modes(pipeline.model, inputs, [visual], **generation_kwargs("greedy", **length))

    times = round_robin({
        "baseline_ttft": answer("baseline", {"max_new_tokens": 1}),
        "sam_ttft": answer("sam", {"max_new_tokens": 1}),
        "baseline_total": answer("baseline", length),
        "sam_total": answer("sam", length),
        "compare_ttft": answer("compare", {"max_new_tokens": 1}),
        "compare_total": answer("compare", length),
        "compare_in_turn": compare_in_turn,
    }, repeats)
    result = pipeline.generate(images, prompt, mode="compare", **length)
    assert all(a.new_tokens == ANSWER_TOKENS for a in result.answers.values()), result.answers
    return {
        "precision": precision, "threads": threads, **times,
        "decode_tokens_per_s": (ANSWER_TOKENS - 1) / (times["sam_total"] - times["sam_ttft"]),
        "rss_loaded_mb": rss_loaded / 2**20,
        "peak_rss_mb": peak_rss_mb(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        f"| precision | threads | TTFT baseline (ms) | TTFT SAM (ms) | {ANSWER_TOKENS} tokens baseline (ms) "
        f"| {ANSWER_TOKENS} tokens SAM (ms) | SAM / baseline | compare: first tokens (ms) | compare: both answers (ms) "
        "| compare, answers in turn (ms) | decode tokens/s | RSS loaded / peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['threads']} | {r['baseline_ttft'] * 1e3:.1f} | {r['sam_ttft'] * 1e3:.1f} "
            f"| {r['baseline_total'] * 1e3:.1f} | {r['sam_total'] * 1e3:.1f} | {r['sam_total'] / r['baseline_total']:.2f}× "
            f"| {r['compare_ttft'] * 1e3:.1f} | {r['compare_total'] * 1e3:.1f} | {r['compare_in_turn'] * 1e3:.1f} "
            f"| {r['decode_tokens_per_s']:.0f} "
            f"| {r['rss_loaded_mb']:.0f} / {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precisions", nargs="+", choices=sorted(QUANTIZATION), default=["fp32", "nf4"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--one", nargs=2, metavar=("PRECISION", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        with torch.no_grad():
            print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return
    rows = []
    for precision in args.precisions:
        for threads in args.threads:
            command = [sys.executable, "-m", "benchmarks.end_to_end", "--repeats", str(args.repeats), "--one", precision, str(threads)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    print(f"embedded default, {NUM_IMAGES} MiniLINK images, greedy, torch {torch.__version__}, "
          f"{psutil.cpu_count()} CPU cores, median of {args.repeats} round-robin runs\n")
    print(table(rows))


if __name__ == "__main__":
    main()
