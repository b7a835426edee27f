"""Cost of SAM studio's analysis views on the embedded default, as multiples of one SAM generation.

Four MiniLINK images, a 20-token answer (greedy; `min_new_tokens` holds every answer at 20 tokens), all rows
measured side by side in one run, round-robin, median of `--repeats` after a warm-up round. Attributions cover
SAM and the baseline (what the report computes), each explaining its own answer.

    python -m benchmarks.analysis [--repeats 5] [--threads 1]
"""

import argparse
import tempfile
from pathlib import Path

import torch

from sam_core.data import MiniLinkConfig, make_sample
from sam_core.generation import SamPipeline
from sam_core.loading import load_sam
from visualization import (
    attention_maps, capture, explain, guidance_maps, image_attribution, patch_attribution, plot_attention_maps,
    plot_guidance, word_attribution,
)
from visualization.capture import MODES
from visualization.common import figure_png

from .common import round_robin

NUM_IMAGES, ANSWER_TOKENS = 4, 20


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pipeline = SamPipeline(load_sam())
    sample = make_sample(2, 0, MiniLinkConfig(min_images=NUM_IMAGES, max_images=NUM_IMAGES, tasks=("group",)))
    images, prompt = sample.images, sample.instruction
    length = {"max_new_tokens": ANSWER_TOKENS, "min_new_tokens": ANSWER_TOKENS}
    run = capture(pipeline, images, prompt, **length)
    assert all(len(run.answer_ids[mode]) == ANSWER_TOKENS for mode in MODES)

    def sam_answer_and_views(figures: bool):
        sam_run = capture(pipeline, images, prompt, modes=("sam",), **length)
        visual = sam_run.visual["sam"]
        maps = guidance_maps(visual), attention_maps(visual, "image"), attention_maps(visual, "context")
        if figures:
            figure_png(plot_guidance(maps[0], sam_run.images))
            figure_png(plot_attention_maps(maps[1], sam_run.images))

    def both_modes(method):
        return lambda: [method(pipeline, run, mode) for mode in MODES]

    def full_report():
        with tempfile.TemporaryDirectory() as directory:
            explain(pipeline, images, prompt, **length).write(Path(directory) / "report.html")

    rows = [
        ("one SAM generation (greedy, 20 tokens)", lambda: pipeline.generate(images, prompt, mode="sam", **length), None),
        ("SAM answer + attention & guidance maps (same pass)", lambda: sam_answer_and_views(False), 1.2),
        ("… the same + their two figures (PNG)", lambda: sam_answer_and_views(True), None),
        ("per-image attribution (SAM + baseline)", both_modes(image_attribution), 10),
        ("per-patch attribution (SAM + baseline, 4×4 patches)", both_modes(patch_attribution), None),
        ("prompt-word attribution (SAM + baseline)", both_modes(word_attribution), None),
        ("full report (compare run, all views, HTML + JSON)", full_report, 30),
    ]
    medians = round_robin({label: function for label, function, _ in rows}, args.repeats)
    timings = [(label, medians[label], target) for label, _, target in rows]
    unit = timings[0][1]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved runs, "
        f"{NUM_IMAGES} images, {ANSWER_TOKENS}-token answers, embedded checkpoint\n"
    )
    print("| view | time (ms) | × one SAM generation | target |")
    print("|---|---|---|---|")
    for label, seconds, target in timings:
        print(f"| {label} | {seconds * 1e3:.1f} | {seconds / unit:.2f}× | {f'≤ {target}×' if target else ''} |")


if __name__ == "__main__":
    main()
