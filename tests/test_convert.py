import hashlib
import re
import subprocess
import sys

import pytest
import torch
from reference import reference_visual_tokens
from safetensors.torch import load_file

from sam_core.cli import main
from sam_core.convert import ConversionError, convert_checkpoint, convert_state_dict, read_lavis_checkpoint
from sam_core.loading import load_adapter, load_sam

# Our key → the authors' LAVIS key, written out independently of the converter's rules.
TO_LAVIS = [
    (r"guidance\.patch_scorer\.(.*)", r"attn.\1"),
    (r"guidance\.image_to_context\.(.*)", r"Qformer.bert.encoder.one_2_muliple.0.\1"),
    (r"guidance\.context_to_image\.(.*)", r"Qformer.bert.encoder.multiple_2_one.0.\1"),
    (r"language_projection\.(.*)", r"llm_proj.\1"),
    (r"vision_model\.post_layernorm\.(.*)", r"ln_vision.\1"),
    (r"qformer\.embeddings\.layernorm\.(.*)", r"Qformer.bert.embeddings.LayerNorm.\1"),
    (r"qformer\.embeddings\.(.*)", r"Qformer.bert.embeddings.\1"),
    (r"qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.(.*)", r"Qformer.bert.encoder.layer.\1.\2.self.\3"),
    (r"qformer\.encoder\.layer\.(.*)", r"Qformer.bert.encoder.layer.\1"),
    (r"vision_model\.embeddings\.class_embedding", r"visual_encoder.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", r"visual_encoder.pos_embed"),
    (r"vision_model\.embeddings\.patch_embedding\.(.*)", r"visual_encoder.patch_embed.proj.\1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.(.*)", r"visual_encoder.blocks.\1.norm\2.\3"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.weight", r"visual_encoder.blocks.\1.attn.qkv.weight"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.(.*)", r"visual_encoder.blocks.\1.attn.proj.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(.*)", r"visual_encoder.blocks.\1.mlp.\2"),
    (r"language_model\.(.*)", r"llm_model.\1"),
    (r"query_tokens", r"query_tokens"),
]


def to_lavis(state):
    lavis = {}
    for key, tensor in state.items():
        if match := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias", key):
            q_bias, _, v_bias = tensor.chunk(3)
            lavis[f"visual_encoder.blocks.{match.group(1)}.attn.q_bias"] = q_bias
            lavis[f"visual_encoder.blocks.{match.group(1)}.attn.v_bias"] = v_bias
            continue
        for pattern, replacement in TO_LAVIS:
            if re.fullmatch(pattern, key):
                lavis[re.sub(f"^{pattern}$", replacement, key)] = tensor
                break
        else:
            raise AssertionError(f"test mapping misses {key}")
    lavis["Qformer.cls.predictions.bias"] = torch.zeros(3)  # LAVIS keeps an unused MLM head
    return lavis


def eva_like(model):
    """EVA-CLIP has no key bias: zero that third of each qkv bias so the round trip is exact."""
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            third = layer.self_attn.qkv.bias.shape[0] // 3
            layer.self_attn.qkv.bias[third : 2 * third] = 0
    return model


def test_full_lavis_state_dict_roundtrips(tmp_path, make_model):
    model = eva_like(make_model(active=True))
    state = model.state_dict()
    torch.save({"model": to_lavis(state)}, tmp_path / "sam.pth")
    converted = convert_checkpoint(tmp_path / "sam.pth", tmp_path / "sam.safetensors")
    assert set(converted) == set(state)
    assert all(torch.equal(converted[key], state[key]) for key in state)
    assert set(load_file(tmp_path / "sam.safetensors")) == set(state)


def test_converted_adapter_reproduces_the_authors_computation(tmp_path, make_model, processor, three_images):
    authors = make_model(seed=3, active=True)
    trainable = {k: v for k, v in to_lavis(authors.state_dict()).items() if k.startswith(("attn.", "Qformer.bert.encoder.one", "Qformer.bert.encoder.multiple"))}
    torch.save({"model": trainable}, tmp_path / "released.pth")
    convert_checkpoint(tmp_path / "released.pth", tmp_path / "adapter.safetensors")
    ours = make_model(seed=3)  # same frozen weights, identity guidance
    assert sorted(load_adapter(ours, tmp_path / "adapter.safetensors"))[0].startswith("guidance.")
    inputs = processor(three_images, "what is shared ?")
    with torch.no_grad():
        features = ours.encode_images(inputs["pixel_values"])
        tokens = ours.extract_visual_tokens(inputs["qformer_input_ids"], inputs["qformer_attention_mask"], patch_features=features)
        expected = reference_visual_tokens(authors, features, inputs["qformer_input_ids"], inputs["qformer_attention_mask"])
    assert torch.allclose(tokens.visual_tokens, expected, atol=1e-5)


def test_unknown_keys_and_unsafe_pickles_are_refused(tmp_path):
    with pytest.raises(ConversionError, match="no SAM counterpart"):
        convert_state_dict({"attn.weight": torch.zeros(1, 4), "mystery.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match="q_bias"):
        convert_state_dict({"visual_encoder.blocks.0.attn.q_bias": torch.zeros(2)})
    torch.save({"model": {"attn.weight": torch.zeros(1, 4)}, "optimizer": subprocess.Popen}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="weights-only"):
        read_lavis_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="no such file"):
        read_lavis_checkpoint(tmp_path / "absent.pth")


def test_convert_command(tmp_path, make_model):
    model = make_model(active=True)
    adapter = {k: v for k, v in to_lavis(model.state_dict()).items() if k.startswith("attn.")}
    torch.save({"model": adapter}, tmp_path / "in.pth")
    done = subprocess.run(
        [sys.executable, "-m", "sam_core", "convert", str(tmp_path / "in.pth"), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, check=True,
    )
    assert "wrote 2 tensors" in done.stdout
    assert torch.equal(load_file(tmp_path / "out.safetensors")["guidance.patch_scorer.weight"], model.guidance.patch_scorer.weight)


def test_convert_writes_a_folder_ready_to_upload_with_a_model_card(tmp_path, make_model, tiny_checkpoint):
    model = make_model(active=True)
    released = {k: v for k, v in to_lavis(model.state_dict()).items() if k.startswith(("attn.", "Qformer.bert.encoder.one", "Qformer.bert.encoder.multiple"))}
    torch.save({"model": released}, tmp_path / "sam_lavis.pth")
    assert main(["convert", str(tmp_path / "sam_lavis.pth"), str(tmp_path / "upload")]) == 0
    assert sorted(p.name for p in (tmp_path / "upload").iterdir()) == ["README.md", "sam_adapter.safetensors"]
    card = (tmp_path / "upload" / "README.md").read_text()
    digest = hashlib.sha256((tmp_path / "sam_lavis.pth").read_bytes()).hexdigest()
    assert f"`sam_lavis.pth` (SHA-256 `{digest}`)" in card and "base_model: Salesforce/instructblip-vicuna-7b" in card
    assert "`python -m sam_core convert sam_lavis.pth upload`" in card and "| `guidance.patch_scorer` | 2 |" in card
    loaded = load_sam(str(tiny_checkpoint), adapter=tmp_path / "upload" / "sam_adapter.safetensors")
    assert torch.equal(loaded.model.guidance.image_to_context.weight, model.guidance.image_to_context.weight)
    assert main(["convert", str(tmp_path / "sam_lavis.pth"), str(tmp_path / "upload")]) == 2  # never overwrites
    assert main(["convert", str(tmp_path / "absent.pth"), str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "nothing").exists()  # a failed conversion leaves no folder behind
