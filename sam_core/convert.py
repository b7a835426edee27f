"""Convert the authors' LAVIS-format SAM checkpoint (`{"model": state_dict}` in a .pth) to our safetensors.

The .pth is read with `torch.load(weights_only=True)`, which never unpickles arbitrary objects. Every key must
map to a parameter of `SamForConditionalGeneration`; unknown keys are an error, not silently dropped.
The result is one .safetensors file, or a folder ready for `hf upload`: the file plus a model card that names
the source checkpoint (with its SHA-256) and the command that made it.
"""

import hashlib
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loading import ADAPTER_FILENAME, adapter_summary

# (LAVIS pattern, our pattern), applied in order; groups carry layer indices and parameter names.
KEY_RULES = [
    (r"attn\.(weight|bias)", r"guidance.patch_scorer.\1"),
    (r"Qformer\.bert\.encoder\.one_2_muliple\.0\.(weight|bias)", r"guidance.image_to_context.\1"),
    (r"Qformer\.bert\.encoder\.multiple_2_one\.0\.(weight|bias)", r"guidance.context_to_image.\1"),
    (r"query_tokens", r"query_tokens"),
    (r"llm_proj\.(weight|bias)", r"language_projection.\1"),
    (r"ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.embeddings.layernorm.\1"),
    (r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.weight", r"qformer.embeddings.\1.weight"),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.attention.\3.\4",
    ),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.output.\3.\4",
    ),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate|intermediate_query)\.dense\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.dense.\3",
    ),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(output|output_query)\.(dense|LayerNorm)\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.\3.\4",
    ),
    (r"visual_encoder\.cls_token", r"vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", r"vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"llm_model\.(.+)", r"language_model.\1"),
]
# EVA-CLIP keeps separate q and v biases (k has none); InstructBLIP's vision attention has one qkv bias.
EVA_QV_BIAS = re.compile(r"visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)")
LAVIS_IGNORED = re.compile(r"(Qformer\.cls\..*|.*\.position_ids|visual_encoder\.head\..*|visual_encoder\.norm\..*)")


class ConversionError(ValueError):
    pass


def convert_key(lavis_key: str) -> str | None:
    for pattern, replacement in KEY_RULES:
        if re.fullmatch(pattern, lavis_key):
            return re.sub(f"^{pattern}$", replacement, lavis_key)
    return None


def convert_state_dict(lavis_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAVIS SAM keys → SamForConditionalGeneration keys (raises on keys it does not know)."""
    converted, qv_biases, unknown = {}, {}, []
    for key, tensor in lavis_state.items():
        if LAVIS_IGNORED.fullmatch(key):
            continue
        if match := EVA_QV_BIAS.fullmatch(key):
            qv_biases.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
            continue
        ours = convert_key(key)
        if ours is None:
            unknown.append(key)
        else:
            converted[ours] = tensor
    if unknown:
        raise ConversionError(f"{len(unknown)} checkpoint keys have no SAM counterpart, e.g. {unknown[:5]}")
    for layer, biases in qv_biases.items():
        if set(biases) != {"q_bias", "v_bias"}:
            raise ConversionError(f"vision block {layer} has {sorted(biases)} but needs both q_bias and v_bias")
        q_bias, v_bias = biases["q_bias"], biases["v_bias"]
        converted[f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = torch.cat(
            [q_bias, torch.zeros_like(v_bias), v_bias]
        )
    return converted


def read_lavis_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a LAVIS .pth, loaded without unpickling arbitrary objects."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except Exception as error:  # a pickle with objects weights_only refuses, or not a checkpoint at all
        raise ConversionError(f"{Path(path).name}: not a weights-only PyTorch checkpoint ({error.__class__.__name__})") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{Path(path).name}: expected {{'model': state_dict}} or a plain state dict of tensors")
    return state


def convert_checkpoint(source: str | Path, destination: str | Path) -> dict[str, torch.Tensor]:
    """Read a LAVIS .pth, write our keys to a .safetensors adapter/override file; returns the converted dict."""
    converted = convert_state_dict(read_lavis_checkpoint(source))
    save_converted(converted, destination)
    return converted


def save_converted(converted: dict[str, torch.Tensor], destination: str | Path) -> None:
    save_file({k: v.contiguous() for k, v in converted.items()}, str(destination), metadata={"format": "pt"})


def write_upload_folder(source: str | Path, folder: str | Path, base_model: str, command: str) -> dict[str, torch.Tensor]:
    """Convert into `folder`/sam_adapter.safetensors and write `folder`/README.md, a model card naming the
    source checkpoint, its SHA-256, the base model and `command`; the folder is what `hf upload` sends."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ConversionError(f"{folder.name}: the folder exists and is not empty")
    converted = convert_state_dict(read_lavis_checkpoint(source))  # a bad checkpoint fails before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    save_converted(converted, folder / ADAPTER_FILENAME)
    (folder / "README.md").write_text(model_card(Path(source), converted, base_model, command))
    return converted


def model_card(source: Path, converted: dict[str, torch.Tensor], base_model: str, command: str) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    tensors = "\n".join(f"| `{group}` | {count} |" for group, count in sorted(adapter_summary(sorted(converted)).items()))
    parameters = sum(t.numel() for t in converted.values())
    return f"""---
base_model: {base_model}
tags:
- sam-studio
- instructblip
- multi-image
---

# SAM adapter weights for {base_model}

SAM's weights (*Semantic Alignment for Multimodal Large Language Models*, Wu, Li et al., ACM MM 2024,
[arXiv 2408.12867](https://arxiv.org/abs/2408.12867)): the guidance layers and whatever base-model weights the
checkpoint overrides, in SAM studio's names, converted from a LAVIS-format checkpoint of the authors' code
([McCartney01/SAM](https://github.com/McCartney01/SAM)).

- Source checkpoint: `{source.name}` (SHA-256 `{digest.hexdigest()}`)
- Converted with: `{command}`
- {len(converted)} tensors, {parameters:,} parameters:

| module | tensors |
|---|---|
{tensors}

Use it in SAM studio (the file is found by its default name, `sam_adapter.safetensors`):

```bash
python -m sam_core info --model {base_model} --adapter OWNER/THIS_REPO
SAM_MODEL={base_model} SAM_ADAPTER=OWNER/THIS_REPO python app.py
```

Licence: these are the SAM authors' weights in another file format, and their terms apply (their repository
states none); so do the base model's ({base_model}; the InstructBLIP-Vicuna models are for research use under
the terms of LLaMA and Vicuna v1.1, which are non-commercial).
"""
