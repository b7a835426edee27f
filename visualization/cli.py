"""Command line: `python -m visualization explain --images a.png b.png --prompt "..." --out report.html`."""

import argparse
import sys
from pathlib import Path

from sam_core.cli import add_input_arguments, add_model_arguments, build_prompt, print_notes
from sam_core.generation import GENERATION_PRESETS, SamPipeline
from sam_core.loading import SamLoadError, load_sam
from sam_core.processing import ImageLoadError, load_image

from .attribution import REFERENCES
from .report import explain


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m visualization", description="Explain SAM's and the baseline's answers")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("explain", help="write an HTML report (and its JSON) for an image set and a prompt")
    add_input_arguments(report)
    report.add_argument("--out", required=True, help="the HTML file to write; the JSON goes next to it")
    report.add_argument("--preset", choices=sorted(GENERATION_PRESETS), default="greedy")
    report.add_argument("--max-new-tokens", type=int, default=20)
    report.add_argument("--reference", choices=REFERENCES, default="blank", help="what ablated patch features become")
    report.add_argument("--window", type=int, default=None, help="patch-occlusion block side in patches")
    report.add_argument("--seed", type=int, default=0)
    add_model_arguments(report)
    return parser


def run_explain(args) -> int:
    prompt = build_prompt(args)
    for path in args.images:  # fail on a bad file before loading the model
        load_image(path)
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    if args.window is not None and args.window < 1:
        raise ValueError("--window must be at least 1")
    out = Path(args.out)
    if out.suffix.lower() == ".json":
        raise ValueError("--out names the HTML file; the JSON is written next to it")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such directory for --out")
    loaded = load_sam(args.model, args.adapter, args.quantization, args.device, context=args.context)
    print_notes(loaded.info)
    report = explain(
        SamPipeline(loaded), args.images, prompt, preset=args.preset, max_new_tokens=args.max_new_tokens,
        reference=args.reference, window=args.window, seed=args.seed,
    )
    page, numbers = report.write(args.out)
    print(f"wrote {page} and {numbers}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_explain(args)
    except (SamLoadError, ImageLoadError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
