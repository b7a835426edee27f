"""The full InstructBLIP-Vicuna-7B architecture (random weights) on one GPU: fp16, then 4-bit NF4.

For N images it times one SAM answer and one baseline answer (time to first token: extraction + prefill + one
token; total for `--new-tokens` tokens, every answer held at that length), the app's compare request (one shared
extraction, both answers), decode tokens/s, and the peak GPU memory of the compare request. Medians of
`--repeats` after a warm-up; SAM and the baseline are timed round-robin in the same run.

    python -m benchmarks.gpu [--images 2 4 8] [--new-tokens 32] [--repeats 3] [--json results.json]
    python -m benchmarks.gpu --depth 1 --device cpu   # a dry run of the same code, on a CPU
"""

import argparse
import json
import time

import torch

from .common import round_robin
from .full_size import PAD_ID, PROMPT_WORDS, full_size_config, quantize_language_model_4bit, random_inputs, random_model


def answer(model, inputs: dict, guidance: bool, tokens: int) -> None:
    visual = model.extract_visual_tokens(
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"], pixel_values=inputs["pixel_values"],
        guidance=guidance,
    )
    generate(model, inputs, visual, tokens)


def generate(model, inputs: dict, visual, tokens: int) -> None:
    new_ids = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], visual=visual, do_sample=False,
        max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=PAD_ID,
    )
    assert new_ids.shape[1] == tokens, new_ids.shape


def compare(model, inputs: dict, tokens: int) -> None:
    """The app's request: one extraction for both modes, then the SAM and the baseline answers."""
    sam, baseline = model.extract_compare(
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"], pixel_values=inputs["pixel_values"]
    )
    generate(model, inputs, sam, tokens)
    generate(model, inputs, baseline, tokens)


def measure(model, precision: str, args) -> list[dict]:
    rows = []
    for num_images in args.images:
        inputs = random_inputs(model.config, num_images, PROMPT_WORDS, args.device, args.dtype)
        times = round_robin({
            "baseline_ttft": lambda: answer(model, inputs, False, 1),
            "sam_ttft": lambda: answer(model, inputs, True, 1),
            "baseline_total": lambda: answer(model, inputs, False, args.new_tokens),
            "sam_total": lambda: answer(model, inputs, True, args.new_tokens),
        }, args.repeats)
        if args.cuda:
            torch.cuda.reset_peak_memory_stats()
        times["compare_total"] = round_robin({"c": lambda: compare(model, inputs, args.new_tokens)}, args.repeats)["c"]
        row = {
            "precision": precision, "images": num_images, "prompt_tokens": inputs["input_ids"].shape[1], **times,
            "decode_tokens_per_s": (args.new_tokens - 1) / (times["sam_total"] - times["sam_ttft"]),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.cuda else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], weights: dict, new_tokens: int) -> str:
    lines = [
        f"| precision | weights (GiB) | N | prompt tokens | TTFT baseline (s) | TTFT SAM (s) | {new_tokens} tokens baseline (s) "
        f"| {new_tokens} tokens SAM (s) | SAM / baseline | compare, both answers (s) | decode tokens/s | peak (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        peak = "–" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        lines.append(
            f"| {row['precision']} | {weights[row['precision']]:.2f} | {row['images']} | {row['prompt_tokens']} "
            f"| {row['baseline_ttft']:.3f} | {row['sam_ttft']:.3f} | {row['baseline_total']:.2f} | {row['sam_total']:.2f} "
            f"| {row['sam_total'] / row['baseline_total']:.3f}× | {row['compare_total']:.2f} "
            f"| {row['decode_tokens_per_s']:.1f} | {peak} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--depth", type=int, default=None, help="cap every stack at this many layers (dry runs)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    args.cuda = args.device.startswith("cuda")
    args.dtype = torch.float16 if args.cuda else torch.float32
    torch.manual_seed(0)

    start = time.perf_counter()
    model = random_model(full_size_config(depth=args.depth), args.device, args.dtype)
    print(f"built the model on {args.device} in {time.perf_counter() - start:.1f} s", flush=True)
    parameters = sum(p.numel() for p in model.parameters())
    weights, rows = {}, []

    def weight_gib() -> float:
        if args.cuda:
            return torch.cuda.memory_allocated() / 2**30
        return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30

    weights["fp16" if args.cuda else "fp32"] = weight_gib()
    rows += measure(model, "fp16" if args.cuda else "fp32", args)
    try:
        swapped = quantize_language_model_4bit(model, args.dtype)
    except Exception as error:  # e.g. a bitsandbytes build without this CUDA: keep the fp16 table
        print(f"4-bit quantisation failed, NF4 rows skipped: {type(error).__name__}: {error}", flush=True)
    else:
        if args.cuda:
            torch.cuda.empty_cache()
        weights["nf4"] = weight_gib()
        print(f"quantised {swapped} LLM linear layers to NF4", flush=True)
        rows += measure(model, "nf4", args)

    device_name = torch.cuda.get_device_name() if args.cuda else "CPU"
    print(f"\n{device_name}, torch {torch.__version__}, {parameters / 1e9:.2f} B parameters, batch 1, "
          f"{PROMPT_WORDS} prompt words + N×32 visual tokens, greedy, median of {args.repeats}\n")
    print(table(rows, weights, args.new_tokens))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_name, "torch": torch.__version__, "parameters": parameters,
                       "weights_gib": weights, "new_tokens": args.new_tokens, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
