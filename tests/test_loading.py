import sys

import pytest
import torch
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

from sam_core import loading
from sam_core.generation import SamPipeline
from sam_core.loading import (
    ADAPTER_IN_CHECKPOINT, EMBEDDED_DEFAULT, IDENTITY_WARNING, SamLoadError, load_adapter, load_sam, save_adapter,
)


def test_embedded_default_loads_offline_in_4bit_with_its_trained_adapter():
    loaded = load_sam()
    assert loaded.info.source == "embedded" and loaded.info.quantization == "4bit" and loaded.info.precision_note is None
    assert loaded.info.precision == "4-bit NF4 language model, float32 elsewhere"
    assert not loaded.info.guidance_identity and loaded.info.warning is None
    assert loaded.info.adapter == ADAPTER_IN_CHECKPOINT and loaded.info.adapter_tensors == {}
    assert EMBEDDED_DEFAULT.joinpath("model.safetensors").stat().st_size < 20_000_000


def test_auto_is_full_precision_with_a_reason_where_bitsandbytes_cannot_run_4bit(monkeypatch, tiny_checkpoint):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine without a usable bitsandbytes
    reason = loading.four_bit_unavailable.__wrapped__("cpu")  # the real check, past its per-device cache
    assert reason.startswith("bitsandbytes cannot run 4-bit on cpu (ModuleNotFoundError")
    monkeypatch.setattr(loading, "four_bit_unavailable", lambda device: reason)
    loaded = load_sam(str(tiny_checkpoint))
    assert loaded.info.quantization == "none" and loaded.info.precision == "float32 throughout"
    assert loaded.info.precision_note == f"Full precision: {reason}."
    with pytest.raises(SamLoadError, match="--quantization 4bit: bitsandbytes cannot run 4-bit"):
        load_sam(str(tiny_checkpoint), quantization="4bit")


def test_full_precision_on_request_says_so_and_weights_are_counted_as_stored(tiny_checkpoint):
    full = load_sam(str(tiny_checkpoint), quantization="none")
    assert full.info.precision_note.startswith("Full precision: quantization is set to none")
    assert full.info.weights_mb == round(sum(p.numel() * 4 for p in full.model.state_dict().values()) / 2**20, 2)
    four_bit = load_sam(str(tiny_checkpoint))
    lm_head = full.model.language_model.get_output_embeddings()
    linears = [m.weight.numel() for m in full.model.language_model.modules() if isinstance(m, torch.nn.Linear) and m is not lm_head]
    packed = full.info.weights_mb - sum(linears) * (4 - 0.5) / 2**20  # 4 bits a weight
    # statistics: at most an fp32 absmax per 64 weights, and per layer its code tables (16 + 256 floats)
    statistics = (sum(linears) * 4 / 64 + len(linears) * 4 * (16 + 256 + 2)) / 2**20
    assert packed < four_bit.info.weights_mb < packed + statistics + 0.01  # weights_mb is rounded to 0.01


def test_a_checkpoint_without_adapter_reports_identity_guidance(tiny_checkpoint):
    loaded = load_sam(str(tiny_checkpoint))
    assert loaded.info.guidance_identity and loaded.info.warning == IDENTITY_WARNING


def test_four_bit_on_cpu_quantises_only_the_language_model(tiny_checkpoint, three_images):
    import bitsandbytes as bnb

    loaded = load_sam(str(tiny_checkpoint), quantization="4bit", device="cpu")
    model = loaded.model
    assert isinstance(model.language_model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    for module_name in ("vision_model", "qformer", "language_projection", "guidance"):
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in getattr(model, module_name).modules())
    result = SamPipeline(loaded).generate(three_images, "what is shared ?", max_new_tokens=4)
    assert set(result.answers) == {"sam", "baseline"}
    assert all(answer.new_tokens > 0 for answer in result.answers.values())


def test_plain_instructblip_checkpoint_loads_as_identity_sam(tmp_path, hf_processor, make_model, three_images):
    reference = make_model()
    config = InstructBlipConfig(
        vision_config=reference.config.vision_config.to_dict(),
        qformer_config=reference.config.qformer_config.to_dict(),
        text_config=reference.config.text_config.to_dict(),
        num_query_tokens=reference.config.num_query_tokens,
        image_token_index=reference.config.image_token_index,
    )
    plain = InstructBlipForConditionalGeneration(config)
    plain.load_state_dict(reference.state_dict(), strict=False)
    plain.save_pretrained(tmp_path)
    hf_processor.save_pretrained(tmp_path)
    loaded = load_sam(str(tmp_path), quantization="none", context="others")  # exact logits need full precision
    assert loaded.info.guidance_identity and loaded.info.context == "others"
    inputs = loaded.processor(three_images, "what ?")
    with torch.no_grad():
        assert torch.equal(loaded.model(**inputs).logits, reference(**inputs, guidance=False).logits)


def test_adapter_roundtrip_and_shape_check(tmp_path, tiny_checkpoint, make_model):
    trained = make_model(active=True)
    save_adapter(trained, tmp_path / "adapter.safetensors")
    loaded = load_sam(str(tiny_checkpoint), adapter=tmp_path / "adapter.safetensors")
    assert not loaded.info.guidance_identity and loaded.info.adapter == "adapter.safetensors"
    assert loaded.info.adapter_tensors == {"guidance.patch_scorer": 2, "guidance.image_to_context": 2, "guidance.context_to_image": 2}
    assert torch.equal(loaded.model.guidance.context_to_image.weight, trained.guidance.context_to_image.weight)

    wider = make_model(qformer_config={"hidden_size": 48, "intermediate_size": 96})
    save_adapter(wider, tmp_path / "wrong.safetensors")
    before = loaded.model.guidance.context_to_image.weight.clone()
    with pytest.raises(SamLoadError, match="wrong shapes"):
        load_adapter(loaded.model, tmp_path / "wrong.safetensors")
    assert torch.equal(loaded.model.guidance.context_to_image.weight, before)  # nothing half-loaded
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SamLoadError, match="not a readable safetensors"):
        load_adapter(loaded.model, tmp_path / "junk.safetensors")


def test_unreachable_hub_says_what_is_missing_and_how_to_fix_it():
    with pytest.raises(SamLoadError) as error:
        load_sam("Salesforce/instructblip-vicuna-7b")
    message = str(error.value)
    assert "Salesforce/instructblip-vicuna-7b" in message and "--model DIR" in message
    assert "`hf download Salesforce/instructblip-vicuna-7b --local-dir DIR`" in message  # the pinned hub's CLI


def test_bad_names_and_options_are_refused(tmp_path):
    with pytest.raises(SamLoadError, match="no such model directory"):
        load_sam(str(tmp_path / "missing"))
    with pytest.raises(SamLoadError, match="quantization"):
        load_sam(quantization="3bit")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SamLoadError, match="Could not load"):
        load_sam(str(tmp_path))
