"""Cost of SAM studio's analysis views on the embedded default, as multiples of one SAM generation.

Four MiniLINK images, a 20-token answer (greedy; `min_new_tokens` holds every answer at 20 tokens), all rows
measured side by side in one run, round-robin, median of `--repeats` after a warm-up round. Attributions cover
SAM and the baseline (what the report computes), each explaining its own answer; the patch attribution uses the
default window for the model's patch grid, and (one row) the finest window, to show what refining costs.

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
    FIGURES, NARROW, WIDE, attention_maps, capture, compare_attention, explain, figure_png, guidance_maps, image_attribution,
    patch_attribution, plot_attention_comparison, plot_attention_maps, plot_guidance, word_attribution,
)
from visualization.attribution import default_window
from visualization.capture import MODES
from visualization.common import grid_side

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
    report = explain(pipeline, images, prompt, **length)
    side = grid_side(run.visual["sam"].patch_features.shape[2])
    window = default_window(side)

    def sam_answer_and_views(figures: bool):
        sam_run = capture(pipeline, images, prompt, modes=("sam",), **length)
        visual = sam_run.visual["sam"]
        maps = guidance_maps(visual), attention_maps(visual, "image"), attention_maps(visual, "context")
        if figures:
            figure_png(plot_guidance(maps[0], sam_run.images))
            figure_png(plot_attention_maps(maps[1], sam_run.images))

    def both_modes(method, **options):
        return lambda: [method(pipeline, run, mode, **options) for mode in MODES]

    def replot_attention():  # what the attention explorer draws when a selector changes
        visual = report.capture.visual
        figure_png(plot_attention_comparison(compare_attention(visual["sam"], visual["baseline"], head=0), report.capture.images))

    def full_report():
        with tempfile.TemporaryDirectory() as directory:
            explain(pipeline, images, prompt, **length).write(Path(directory) / "report.html")

    rows = [
        ("one SAM generation (greedy, 20 tokens)", lambda: pipeline.generate(images, prompt, mode="sam", **length), None),
        ("SAM answer + attention & guidance maps (same pass)", lambda: sam_answer_and_views(False), 1.2),
        ("… the same + their two figures (PNG)", lambda: sam_answer_and_views(True), None),
        ("per-image attribution (SAM + baseline)", both_modes(image_attribution), 10),
        (f"per-patch attribution (SAM + baseline, default {window}×{window}-patch blocks on the {side}×{side} grid)",
         both_modes(patch_attribution), None),
        ("… finest blocks (1×1 patch), what refining costs", both_modes(patch_attribution, window=1), None),
        ("prompt-word attribution (SAM + baseline)", both_modes(word_attribution), None),
        ("the six figures, wide (desktop and the report)", lambda: report.figures(WIDE), None),
        ("the six figures, narrow (phones)", lambda: report.figures(NARROW), None),
        ("one figure re-plotted (an attention-explorer selection)", replot_attention, None),
        ("full report (compare run, all views, six figures, HTML + JSON)", full_report, 15),
    ]
    medians = round_robin({label: function for label, function, _ in rows}, args.repeats)
    timings = [(label, medians[label], target) for label, _, target in rows]
    unit = timings[0][1]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved runs, "
        f"{NUM_IMAGES} images, {ANSWER_TOKENS}-token answers, embedded checkpoint ({len(FIGURES)} figure kinds)\n"
    )
    print("| view | time (ms) | × one SAM generation | target |")
    print("|---|---|---|---|")
    for label, seconds, target in timings:
        print(f"| {label} | {seconds * 1e3:.1f} | {seconds / unit:.2f}× | {f'≤ {target}×' if target else ''} |")


if __name__ == "__main__":
    main()
