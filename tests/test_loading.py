import pytest
import torch
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

from sam_core.generation import SamPipeline
from sam_core.loading import EMBEDDED_DEFAULT, IDENTITY_WARNING, SamLoadError, load_adapter, load_sam, save_adapter


def test_embedded_default_loads_offline_with_its_trained_adapter():
    loaded = load_sam()
    assert loaded.info.source == "embedded" and loaded.info.quantization == "none"
    assert not loaded.info.guidance_identity and loaded.info.warning is None
    assert EMBEDDED_DEFAULT.joinpath("model.safetensors").stat().st_size < 20_000_000


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
    loaded = load_sam(str(tmp_path), context="others")
    assert loaded.info.guidance_identity and loaded.info.context == "others"
    inputs = loaded.processor(three_images, "what ?")
    with torch.no_grad():
        assert torch.equal(loaded.model(**inputs).logits, reference(**inputs, guidance=False).logits)


def test_adapter_roundtrip_and_shape_check(tmp_path, tiny_checkpoint, make_model):
    trained = make_model(active=True)
    save_adapter(trained, tmp_path / "adapter.safetensors")
    loaded = load_sam(str(tiny_checkpoint), adapter=tmp_path / "adapter.safetensors")
    assert not loaded.info.guidance_identity and loaded.info.adapter == "adapter.safetensors"
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


def test_bad_names_and_options_are_refused(tmp_path):
    with pytest.raises(SamLoadError, match="no such model directory"):
        load_sam(str(tmp_path / "missing"))
    with pytest.raises(SamLoadError, match="quantization"):
        load_sam(quantization="3bit")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SamLoadError, match="Could not load"):
        load_sam(str(tmp_path))
