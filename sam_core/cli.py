"""Command line: `python -m sam_core generate|convert|info ...`."""

import argparse
import json
import sys
from pathlib import Path

import torch

from .convert import ConversionError, convert_checkpoint, write_upload_folder
from .generation import GENERATION_PRESETS, MODES, SamPipeline
from .loading import ADAPTER_FILENAME, PRESETS, QUANTIZATIONS, ModelInfo, SamLoadError, load_sam
from .processing import ImageLoadError, PromptError, group_caption_prompt, load_image, question_prompt, storytelling_prompt

TASKS = ("group", "story")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="embedded (default), a local checkpoint directory, a preset or a hub id")
    parser.add_argument("--adapter", default=None,
                        help=f"SAM adapter weights: a .safetensors file or a Hub reference owner/name[@revision][:file] "
                             f"(file default {ADAPTER_FILENAME})")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="auto",
                        help="auto (default): 4-bit NF4 language model wherever bitsandbytes runs it, else full precision")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--context", choices=("all", "others"), default=None, help="override the checkpoint's context mode")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Images and the prompt (given, or built from the paper's task templates)."""
    parser.add_argument("--images", nargs="+", required=True, help="image files, in order")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt as the model sees it")
    prompt.add_argument("--task", choices=TASKS, help="build the paper's prompt: group captioning or storytelling")
    parser.add_argument("--captions", nargs="*", default=[], help="storytelling: captions of all images but the last")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sam_core", description="SAM: multi-image answers with semantic alignment")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="answer a prompt about a set of images")
    add_input_arguments(generate)
    generate.add_argument("--mode", choices=MODES, default="compare")
    generate.add_argument("--preset", choices=sorted(GENERATION_PRESETS), default="greedy")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    generate.add_argument("--temperature", type=float, default=None)
    generate.add_argument("--repetition-penalty", type=float, default=None)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--json", action="store_true", help="print a machine-readable result with timings")
    add_model_arguments(generate)

    convert = commands.add_parser("convert", help="convert the authors' LAVIS .pth into our safetensors")
    convert.add_argument("source", help="LAVIS checkpoint (.pth)")
    convert.add_argument("destination", help=f"a .safetensors file, or a folder to create for `hf upload` "
                                             f"({ADAPTER_FILENAME} and a model card)")
    convert.add_argument("--base-model", default=PRESETS["instructblip-vicuna-7b"],
                         help="the base model the model card names (the authors': %(default)s)")

    info = commands.add_parser("info", help="describe the model that would be loaded")
    add_model_arguments(info)
    return parser


def build_prompt(args) -> str:
    if args.prompt is not None:
        prompt = question_prompt(args.prompt)
        if not prompt:
            raise PromptError("the prompt is empty")
        return prompt
    if args.task == "group":
        return group_caption_prompt(len(args.images))
    if len(args.captions) != len(args.images) - 1:
        raise ValueError(f"storytelling needs one caption per image but the last: {len(args.images) - 1}, got {len(args.captions)}")
    return storytelling_prompt(args.captions)


def run_generate(args) -> int:
    prompt = build_prompt(args)
    images = [load_image(path) for path in args.images]  # fail on a bad file before loading the model
    loaded = load_sam(args.model, args.adapter, args.quantization, args.device, context=args.context)
    pipeline = SamPipeline(loaded)
    max_new_tokens = args.max_new_tokens or GENERATION_PRESETS[args.preset]["max_new_tokens"]
    if max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    pipeline.check_prompt(prompt, len(images), max_new_tokens)
    result = pipeline.generate(
        images,
        prompt,
        mode=args.mode,
        preset=args.preset,
        seed=args.seed,
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
    )
    if args.json:
        print(json.dumps({"model": loaded.info.to_dict(), "prompt": prompt, "images": [Path(p).name for p in args.images], **result.to_dict()}, indent=2))
        return 0
    print_notes(loaded.info)
    domain = result.domain  # which images look unlike what the model was trained on
    if domain.warning or domain.note:
        print(f"warning: {domain.warning}" if domain.warning else f"note: {domain.note}", file=sys.stderr)
    for mode, answer in result.answers.items():
        label = "SAM" if mode == "sam" else "baseline"
        print(f"{label:>8}: {answer.text}")
    return 0


def print_notes(info: ModelInfo) -> None:
    """Why the model runs in full precision, and whether guidance is the identity (stderr, one line each)."""
    for note in (info.precision_note, info.warning):
        if note:
            print(f"note: {note}", file=sys.stderr)


def run_info(args) -> int:
    loaded = load_sam(args.model, args.adapter, args.quantization, args.device, context=args.context)
    print(json.dumps(loaded.info.to_dict(), indent=2))
    return 0


def run_convert(args) -> int:
    destination = Path(args.destination)
    if destination.suffix == ".safetensors":
        converted = convert_checkpoint(args.source, destination)
        print(f"wrote {len(converted)} tensors to {destination}")
        return 0
    command = f"python -m sam_core convert {Path(args.source).name} {destination.name}"
    if args.base_model != PRESETS["instructblip-vicuna-7b"]:
        command += f" --base-model {args.base_model}"
    converted = write_upload_folder(args.source, destination, args.base_model, command)
    print(f"wrote {len(converted)} tensors and a model card to {destination}/; upload with "
          f"`hf upload OWNER/REPO {destination}` and use it as --adapter OWNER/REPO")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
        if args.command == "convert":
            return run_convert(args)
        return run_info(args)
    except (SamLoadError, ImageLoadError, ConversionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: out of memory: try fewer images, fewer new tokens or --quantization 4bit", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
