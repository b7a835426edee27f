"""The full InstructBLIP-Vicuna-7B architecture (random weights) on one GPU: fp16, LLM.int8 and 4-bit NF4.

For N images it times one SAM answer and one baseline answer (time to first token: extraction + prefill + one
token; total for `--new-tokens` tokens, every answer held at that length), the app's compare request (one shared
extraction, then both answers in turn or in one batch of two), decode tokens/s, and the peak GPU memory of the
batched compare request. Medians of `--repeats` after a warm-up, timed round-robin in the same run; a fresh
model per precision.

    python -m benchmarks.gpu [--images 2 4 8 16] [--new-tokens 32] [--repeats 3] [--json results.json]
    python -m benchmarks.gpu --depth 1 --device cpu   # a dry run of the same code, on a CPU
"""

import argparse
import json
import time

import torch

from sam_core.generation import generate_modes

from .common import round_robin
from .full_size import PAD_ID, PROMPT_WORDS, full_size_config, quantize_language_model, random_inputs, random_model


def answer(model, inputs: dict, guidance: bool, tokens: int) -> None:
    visual = model.extract_visual_tokens(
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"], pixel_values=inputs["pixel_values"],
        guidance=guidance,
    )
    generate(model, inputs, [visual], tokens)


def generate(model, inputs: dict, visual: list, tokens: int) -> None:
    new_ids = generate_modes(model, inputs, visual, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                             pad_token_id=PAD_ID)
    assert new_ids.shape == (len(visual), tokens), new_ids.shape


def compare(model, inputs: dict, tokens: int, batched: bool) -> None:
    """The app's request: one extraction for both modes, then the two answers (one batch of two, or in turn)."""
    sam, baseline = model.extract_compare(
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"], pixel_values=inputs["pixel_values"]
    )
    for group in ([sam, baseline],) if batched else ([sam], [baseline]):
        generate(model, inputs, group, tokens)


def measure(model, precision: str, images: list[int], tokens: int, repeats: int, args) -> list[dict]:
    rows = []
    for num_images in images:
        inputs = random_inputs(model.config, num_images, PROMPT_WORDS, args.device, args.dtype)
        times = round_robin({
            "baseline_ttft": lambda: answer(model, inputs, False, 1),
            "sam_ttft": lambda: answer(model, inputs, True, 1),
            "baseline_total": lambda: answer(model, inputs, False, tokens),
            "sam_total": lambda: answer(model, inputs, True, tokens),
            "compare_in_turn": lambda: compare(model, inputs, tokens, batched=False),
        }, repeats)
        if args.cuda:
            torch.cuda.reset_peak_memory_stats()
        times["compare_batched"] = round_robin({"c": lambda: compare(model, inputs, tokens, batched=True)}, repeats)["c"]
        row = {
            "precision": precision, "images": num_images, "prompt_tokens": inputs["input_ids"].shape[1],
            "new_tokens": tokens, **times,
            "decode_tokens_per_s": (tokens - 1) / (times["sam_total"] - times["sam_ttft"]),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.cuda else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], weights: dict) -> str:
    lines = [
        "| precision | weights (GiB) | N | prompt tokens | new tokens | TTFT baseline (s) | TTFT SAM (s) | answer baseline (s) "
        "| answer SAM (s) | SAM / baseline | compare, in turn (s) | compare, one batch (s) | decode tokens/s | peak (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        peak = "–" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        lines.append(
            f"| {row['precision']} | {weights[row['precision']]:.2f} | {row['images']} | {row['prompt_tokens']} "
            f"| {row['new_tokens']} | {row['baseline_ttft']:.3f} | {row['sam_ttft']:.3f} | {row['baseline_total']:.2f} "
            f"| {row['sam_total']:.2f} | {row['sam_total'] / row['baseline_total']:.3f}× | {row['compare_in_turn']:.2f} "
            f"| {row['compare_batched']:.2f} | {row['decode_tokens_per_s']:.1f} | {peak} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=["fp16", "int8", "nf4"], default=["fp16", "int8", "nf4"])
    parser.add_argument("--int8-images", type=int, nargs="+", default=[2, 16],
                        help="LLM.int8 decodes slowly: a short run at these N, for its memory")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--depth", type=int, default=None, help="cap every stack at this many layers (dry runs)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    args.cuda = args.device.startswith("cuda")
    args.dtype = torch.float16 if args.cuda else torch.float32
    weights, rows, parameters = {}, [], None
    for precision in args.precisions:
        label = precision if precision != "fp16" or args.cuda else "fp32"  # the dry run on a CPU runs in fp32
        torch.manual_seed(0)
        start = time.perf_counter()
        model = random_model(full_size_config(depth=args.depth), args.device, args.dtype)
        parameters = sum(p.numel() for p in model.parameters())
        try:
            if precision != "fp16":
                quantize_language_model(model, 4 if precision == "nf4" else 8, args.dtype)
        except Exception as error:  # e.g. a bitsandbytes build without this CUDA: keep the other rows
            print(f"{precision}: quantisation failed, rows skipped: {type(error).__name__}: {error}", flush=True)
            continue
        if args.cuda:
            torch.cuda.empty_cache()
            weights[label] = torch.cuda.memory_allocated() / 2**30
        else:
            weights[label] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
        print(f"{label}: built in {time.perf_counter() - start:.1f} s, {weights[label]:.2f} GiB", flush=True)
        if precision == "int8":
            rows += measure(model, label, args.int8_images, min(args.new_tokens, 8), 1, args)
        else:
            rows += measure(model, label, args.images, args.new_tokens, args.repeats, args)
        del model
        if args.cuda:
            torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name() if args.cuda else "CPU"
    print(f"\n{device_name}, torch {torch.__version__}, {parameters / 1e9:.2f} B parameters, batch 1, "
          f"{PROMPT_WORDS} prompt words + N×32 visual tokens, greedy, median of {args.repeats} (int8: 1)\n")
    print(table(rows, weights))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_name, "torch": torch.__version__, "parameters": parameters,
                       "weights_gib": weights, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
