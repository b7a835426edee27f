"""Estimated GPU memory of the full SAM (InstructBLIP-Vicuna-7B) against the number of images, per precision.

Module sizes come from a meta-device instantiation of the full config (no weights, no GPU). What the estimate adds
up, for a batch of one:
- weights: the LLM's decoder linear layers at 2 bytes (fp16), 1 byte + an fp32 scale per output row (LLM.int8) or
  0.516 bytes (NF4 with double quantisation: 4 bits + a uint8 absmax per 64 weights + an fp32 absmax per 256
  blocks); everything else (ViT, Q-Former, guidance, embeddings, lm_head, norms) stays fp16, as `load_sam` keeps it;
- the KV cache: 2 × layers × width × 2 bytes per token of prompt (N×32 visual tokens + the words) and answer,
  per sequence (beams × answers decoded together: the app's comparison decodes SAM's and the baseline's in one batch);
- the largest transient: one ViT layer over N images, or one LLM layer's prefill, or (quantised) one linear layer
  dequantised to fp16 for the prefill's matrix product.
The CUDA context (about 0.5 GiB on an H100, outside PyTorch's allocator) comes on top. Against the H100 run in
docs/gpu_h100.json the estimate is 0.4% (fp16) to 3.3% (int8) below the measured peaks.

    python -m benchmarks.memory [--images 1 2 4 8 16 32] [--new-tokens 256] [--sequences 2 10] [--check docs/gpu_h100.json]
"""

import argparse
import json
from dataclasses import dataclass

import torch
from torch import nn

from sam_core import SamForConditionalGeneration

from .full_size import PROMPT_WORDS, full_size_config

GIB = 2**30
PRECISIONS = ("fp16", "int8", "nf4")
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
CARDS = {"T4": 15.0, "L4/A10G": 22.4, "A100 40GB": 39.4, "A100/H100 80GB": 79.1}  # GiB that nvidia-smi reports


@dataclass(frozen=True)
class ModuleSizes:
    """Parameter counts of the full model, split by how `load_sam` stores them."""

    quantizable: int  # the LLM's decoder linear layers
    quantizable_rows: int  # their output features, summed (one int8 scale each)
    largest_linear: int  # weights of the largest of them (dequantised whole during a quantised prefill)
    kept_16bit: int  # everything else
    llm_layers: int
    llm_width: int
    llm_kv_width: int
    llm_intermediate: int
    vision_patches: int
    vision_width: int
    vision_intermediate: int
    vision_heads: int
    num_query_tokens: int


def module_sizes() -> ModuleSizes:
    config = full_size_config()
    with torch.device("meta"):
        model = SamForConditionalGeneration(config)
    lm_head = model.language_model.get_output_embeddings()
    linears = [m for m in model.language_model.modules() if isinstance(m, nn.Linear) and m is not lm_head]
    quantizable = sum(m.weight.numel() for m in linears)
    text, vision = config.text_config, config.vision_config
    return ModuleSizes(
        quantizable=quantizable,
        quantizable_rows=sum(m.out_features for m in linears),
        largest_linear=max(m.weight.numel() for m in linears),
        kept_16bit=sum(p.numel() for p in model.parameters()) - quantizable,
        llm_layers=text.num_hidden_layers,
        llm_width=text.hidden_size,
        llm_kv_width=text.num_key_value_heads * (text.hidden_size // text.num_attention_heads),
        llm_intermediate=text.intermediate_size,
        vision_patches=(vision.image_size // vision.patch_size) ** 2 + 1,
        vision_width=vision.hidden_size,
        vision_intermediate=vision.intermediate_size,
        vision_heads=vision.num_attention_heads,
        num_query_tokens=config.num_query_tokens,
    )


def weight_bytes(sizes: ModuleSizes, precision: str) -> float:
    kept = 2 * sizes.kept_16bit
    if precision == "fp16":
        return kept + 2 * sizes.quantizable
    if precision == "int8":
        return kept + sizes.quantizable + 4 * sizes.quantizable_rows
    if precision == "nf4":
        return kept + NF4_BYTES_PER_WEIGHT * sizes.quantizable
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def prompt_tokens(sizes: ModuleSizes, num_images: int) -> int:
    return num_images * sizes.num_query_tokens + PROMPT_WORDS


def peak_bytes(sizes: ModuleSizes, precision: str, num_images: int, new_tokens: int, sequences: int = 1) -> float:
    """Weights + KV cache at the last token + the largest transient (see the module docstring)."""
    prompt = prompt_tokens(sizes, num_images)
    kv_cache = 2 * sizes.llm_layers * sizes.llm_kv_width * 2 * (prompt + new_tokens) * sequences
    vision_layer = num_images * sizes.vision_patches * (sizes.vision_intermediate + 3 * sizes.vision_width) * 2
    vision_layer += num_images * sizes.vision_heads * sizes.vision_patches**2 * 2
    prefill_layer = prompt * sequences * (2 * sizes.llm_intermediate + 4 * sizes.llm_width) * 2
    dequantised = 0 if precision == "fp16" else 2 * sizes.largest_linear
    return weight_bytes(sizes, precision) + kv_cache + max(vision_layer, prefill_layer + dequantised)


def smallest_card(total_gib: float, context_gib: float = 0.5) -> str:
    """The smallest common GPU whose memory holds the estimate plus the CUDA context."""
    return next((name for name, gib in CARDS.items() if total_gib + context_gib <= gib), "more than 80 GB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--new-tokens", type=int, default=256, help="256: the paper's decoding preset")
    parser.add_argument("--sequences", type=int, nargs="+", default=[2, 10],
                        help="sequences decoded together: 2 = a greedy comparison, 10 = one with 5 beams")
    parser.add_argument("--check", default=None, help="a benchmarks.gpu --json file: estimated vs measured")
    args = parser.parse_args(argv)

    sizes = module_sizes()
    total = sizes.quantizable + sizes.kept_16bit
    print(f"full model: {total / 1e9:.2f} B parameters, {sizes.quantizable / 1e9:.2f} B in the LLM's quantisable "
          f"linear layers; {args.new_tokens} new tokens; GiB, CUDA context (~0.5 GiB) not included\n")
    print("| N | prompt tokens | sequences | fp16 (smallest card) | 8-bit | 4-bit NF4 |")
    print("|---|---|---|---|---|---|")
    for sequences in args.sequences:
        for num_images in args.images:
            cells = []
            for precision in PRECISIONS:
                gib = peak_bytes(sizes, precision, num_images, args.new_tokens, sequences) / GIB
                cells.append(f"{gib:.1f} ({smallest_card(gib)})")
            print(f"| {num_images} | {prompt_tokens(sizes, num_images)} | {sequences} | {' | '.join(cells)} |")
    if args.check:
        print("\n" + check_table(sizes, args.check))


def check_table(sizes: ModuleSizes, path: str) -> str:
    """The estimate against a GPU run's measured weights and peaks (torch.cuda.max_memory_allocated)."""
    with open(path) as handle:
        run = json.load(handle)
    lines = [f"Estimated vs measured on {run['device']} (greedy; both answers of a comparison in one batch):\n",
             "| precision | N | new tokens | estimated peak (GiB) | measured peak (GiB) | error |", "|---|---|---|---|---|---|"]
    for row in run["rows"]:
        estimate = peak_bytes(sizes, row["precision"], row["images"], row["new_tokens"], sequences=2) / GIB
        lines.append(f"| {row['precision']} | {row['images']} | {row['new_tokens']} | {estimate:.2f} | {row['peak_gib']:.2f} "
                     f"| {100 * (estimate - row['peak_gib']) / row['peak_gib']:+.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
