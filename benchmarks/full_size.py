"""The full InstructBLIP-Vicuna-7B architecture with random weights: for the memory model and the GPU benchmark.

The sizes are the public checkpoint's (Salesforce/instructblip-vicuna-7b): an EVA ViT-g/14 at 224 px (39 layers,
width 1408; transformers' InstructBLIP vision defaults), a BERT-base Q-Former with 32 queries (the Q-Former
defaults), Vicuna-7B (LLaMA-7B: 32 layers, width 4096) with the pad and `<image>` tokens added to its 32000 words.
No weights are downloaded: the point is the shapes, so timings and memory are the real model's.
"""

import torch
from torch import nn

from sam_core import SamConfig, SamForConditionalGeneration

VOCAB_SIZE, PAD_ID, IMAGE_TOKEN_ID = 32002, 32000, 32001
PROMPT_WORDS = 40  # the benchmarks' prompt after the N×32 visual tokens


def full_size_config(context: str = "all", depth: int | None = None) -> SamConfig:
    """The 7B model's config; `depth` caps every stack's layer count (a cheap dry run of the same code)."""
    layers = {} if depth is None else {"num_hidden_layers": depth}
    return SamConfig(
        vision_config={**layers},
        qformer_config={**layers},
        text_config={
            "model_type": "llama", "vocab_size": VOCAB_SIZE, "pad_token_id": PAD_ID, "bos_token_id": 1,
            "eos_token_id": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, **layers,
        },
        num_query_tokens=32,
        image_token_index=IMAGE_TOKEN_ID,
        context=context,
    )


def random_model(config: SamConfig, device: str, dtype: torch.dtype) -> SamForConditionalGeneration:
    """Build the model straight on `device` in `dtype` (no fp32 copy on the host); the exchange layers get random
    weights too, so SAM does its real work rather than the identity."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = SamForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        model.query_tokens.normal_(std=0.02)
        for exchange in (model.guidance.image_to_context, model.guidance.context_to_image):
            exchange.weight.normal_(std=0.02)
    return model.eval()


def quantize_language_model(model: SamForConditionalGeneration, bits: int, compute_dtype: torch.dtype) -> int:
    """Swap the LLM's linear layers (not lm_head) in place for bitsandbytes ones: NF4 with double quantisation
    (bits=4) or LLM.int8 (bits=8, outlier threshold 6). That is what `load_sam(quantization=...)` gets from
    transformers, without a 14 GB checkpoint to load it from. Returns how many layers were swapped."""
    import bitsandbytes as bnb

    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    lm_head = model.language_model.get_output_embeddings()
    swapped = 0
    for parent in list(model.language_model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child is lm_head:
                continue
            sizes = (child.in_features, child.out_features)
            if bits == 4:
                layer = bnb.nn.Linear4bit(*sizes, bias=child.bias is not None, compute_dtype=compute_dtype,
                                          compress_statistics=True, quant_type="nf4", device="meta")
                weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                           quant_type="nf4", module=layer)
                layer.weight = weight.to(child.weight.device)  # quantises
            else:
                layer = bnb.nn.Linear8bitLt(*sizes, bias=child.bias is not None, has_fp16_weights=False,
                                            threshold=6.0, device="meta")
                weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
                layer.weight = weight.to(child.weight.device)  # quantises on the way from the host
            if child.bias is not None:
                layer.bias = child.bias
            setattr(parent, name, layer)
            swapped += 1
    return swapped


def random_inputs(config: SamConfig, num_images: int, prompt_tokens: int, device: str, dtype: torch.dtype) -> dict:
    """One sample in the processor's layout: N·K image placeholders, then a prompt of random words."""
    generator = torch.Generator().manual_seed(num_images)
    size = config.vision_config.image_size
    placeholders = torch.full((1, num_images * config.num_query_tokens), config.image_token_id)
    words = torch.randint(3, PAD_ID, (1, prompt_tokens), generator=generator)
    input_ids = torch.cat([placeholders, words], dim=1)
    qformer_ids = torch.randint(1000, config.qformer_config.vocab_size, (1, min(prompt_tokens, 128)), generator=generator)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "qformer_input_ids": qformer_ids.to(device),
        "qformer_attention_mask": torch.ones_like(qformer_ids).to(device),
        "pixel_values": torch.randn(1, num_images, 3, size, size, generator=generator).to(device, dtype),
    }
