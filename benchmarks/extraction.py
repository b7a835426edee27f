"""Extraction time at the full model's Q-Former shape: baseline vs SAM vs a naive per-image loop.

Random weights; patch features are given, so the ViT is out of the picture. Q-Former BERT-base (L=12, d=768,
cross-attention every 2nd layer), K=32 queries, P=257 patches of width D=1408, LLM width 4096.

    python -m benchmarks.extraction [--images 1 2 4 8 16] [--repeats 5] [--device cuda]
"""

import argparse
import sys
from pathlib import Path

import torch

from sam_core import SamConfig, SamForConditionalGeneration

from .common import round_robin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference import reference_visual_tokens  # noqa: E402  (the authors' per-image loop, kept with the tests)

PATCHES, VISION_WIDTH, INSTRUCTION_TOKENS = 257, 1408, 16


def full_qformer_model(context: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> SamForConditionalGeneration:
    config = SamConfig(
        vision_config={"hidden_size": VISION_WIDTH, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 16},
        qformer_config={},  # InstructBLIP's Q-Former defaults: BERT-base, 12 layers, cross-attention every 2nd
        text_config={
            "model_type": "llama", "hidden_size": 4096, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 32, "num_key_value_heads": 1, "vocab_size": 64,
        },
        num_query_tokens=32,
        context=context,
    )
    torch.manual_seed(0)
    model = SamForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(std=0.02)
        for exchange in (model.guidance.image_to_context, model.guidance.context_to_image):
            exchange.weight.normal_(std=0.02)
    return model.to(device, dtype)


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cuda runs in fp16")
    args = parser.parse_args(argv)

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    models = {context: full_qformer_model(context, args.device, dtype) for context in ("all", "others")}
    ids = torch.randint(5, 100, (1, INSTRUCTION_TOKENS), device=args.device)
    mask = torch.ones_like(ids)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}, torch {torch.__version__}, {dtype}, median of {args.repeats} round-robin runs, batch 1\n")
    print("| N | baseline (ms) | SAM all (ms) | SAM others (ms) | per-image loop SAM (ms) | all / baseline | others / baseline | loop / SAM all |")
    print("|---|---|---|---|---|---|---|---|")
    for num_images in args.images:
        features = torch.randn(1, num_images, PATCHES, VISION_WIDTH, device=args.device, dtype=dtype)
        model, others = models["all"], models["others"]
        medians = round_robin({
            "baseline": lambda: model.extract_visual_tokens(ids, mask, patch_features=features, guidance=False),
            "all": lambda: model.extract_visual_tokens(ids, mask, patch_features=features),
            "others": lambda: others.extract_visual_tokens(ids, mask, patch_features=features),
            "loop": lambda: reference_visual_tokens(model, features, ids, mask),
        }, args.repeats)
        baseline, sam_all, sam_others, loop = (medians[k] for k in ("baseline", "all", "others", "loop"))
        print(
            f"| {num_images} | {baseline * 1e3:.1f} | {sam_all * 1e3:.1f} | {sam_others * 1e3:.1f} | {loop * 1e3:.1f} "
            f"| {sam_all / baseline:.2f}× | {sam_others / baseline:.2f}× | {loop / sam_all:.2f}× |"
        )


if __name__ == "__main__":
    main()
