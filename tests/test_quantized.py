"""Everything keeps working on a model loaded in 4-bit NF4 (the default wherever bitsandbytes runs): the
comparison, the analysis with its attention capture, training SAM's adapter, and the rule that quantised weights
are never written back."""

import hashlib
import json
from pathlib import Path

import bitsandbytes as bnb
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file

from sam_core.generation import SamPipeline
from sam_core.loading import EMBEDDED_DEFAULT, load_sam, save_adapter
from sam_core.train import TrainConfig, train, trainable_names
from visualization import explain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def four_bit(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with an active adapter, loaded in NF4 (as `auto` does on this machine)."""
    from sam_core.tiny import tiny_model, tiny_processor

    model = tiny_model(tiny_processor())
    with torch.no_grad():
        for exchange in (model.guidance.image_to_context, model.guidance.context_to_image):
            exchange.weight.normal_(std=0.5)
    adapter = tmp_path_factory.mktemp("adapter") / "active.safetensors"
    save_adapter(model, adapter)
    loaded = load_sam(str(tiny_checkpoint), adapter=adapter)
    assert loaded.info.quantization == "4bit"
    return loaded


def test_compare_and_explain_run_on_the_4bit_model_with_attention_maps(four_bit, three_images):
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in four_bit.model.language_model.modules())
    pipeline = SamPipeline(four_bit)
    result = pipeline.generate(three_images, "what is shared ?", mode="compare", max_new_tokens=4, min_new_tokens=4)
    assert all(answer.new_tokens == 4 for answer in result.answers.values())
    report = explain(pipeline, three_images, "what is shared ?", max_new_tokens=3)
    assert report.guidance is not None  # SAM's α, and both modes' attention from the same pass:
    assert report.attention.sam.maps.shape == report.attention.baseline.maps.shape and report.attention.vmax > 0
    scores = report.image_attributions["sam"].scores
    assert scores.shape[1] == 3 and np.isfinite(scores).all() and np.abs(scores).sum() > 0
    assert report.capture.info.precision == "4-bit NF4 language model, float32 elsewhere"
    assert "4-bit NF4 language model" in report.to_html()


def adapter_gradients(model, batch) -> dict[str, torch.Tensor]:
    trainable_names(model, "sam")
    model.zero_grad()
    model(**batch).loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


def test_adapter_gradients_cross_the_4bit_language_model_even_after_it_generated(tiny_checkpoint, three_images):
    """The loss reaches SAM's adapter through every 4-bit layer, exactly as through the same weights dequantised,
    also after an inference pass (where bitsandbytes would otherwise switch to a kernel without a backward)."""
    loaded = load_sam(str(tiny_checkpoint), quantization="4bit", device="cpu")
    SamPipeline(loaded).generate(three_images, "what is shared ?", max_new_tokens=2)
    batch = loaded.processor([three_images], ["what is shared ?"], answers=["red circle"])
    grads = adapter_gradients(loaded.model, batch)

    reference = load_sam(str(tiny_checkpoint), quantization="none").model
    for name, layer in loaded.model.language_model.named_modules():
        if isinstance(layer, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            reference.language_model.get_submodule(name).weight.data = weight.float()
    expected = adapter_gradients(reference, batch)
    assert set(grads) == set(expected) and any(g.abs().sum() > 0 for g in expected.values())
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_the_adapter_stage_trains_on_the_4bit_embedded_model_and_saves_only_the_adapter(tmp_path):
    before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in EMBEDDED_DEFAULT.rglob("*") if path.is_file()}
    log = train(TrainConfig(stage="sam", out=str(tmp_path / "sam"), model=str(EMBEDDED_DEFAULT), quantization="auto",
                            steps=3, batch_size=4, train_size=32, warmup=1, log_every=3))
    assert torch.isfinite(torch.tensor(log["loss"][-1]["loss"]))
    assert sorted(p.name for p in (tmp_path / "sam").iterdir() if p.suffix == ".safetensors") == ["sam_adapter.safetensors"]
    trained = load_sam(adapter=tmp_path / "sam" / "sam_adapter.safetensors")
    shipped = load_sam()
    assert not torch.equal(trained.model.guidance.patch_scorer.weight, shipped.model.guidance.patch_scorer.weight)
    # a quantised load that has run forward passes never writes back to the checkpoint it came from
    assert before == {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in EMBEDDED_DEFAULT.rglob("*") if path.is_file()}


def test_a_4bit_load_after_forward_passes_equals_a_fresh_one(tiny_checkpoint, three_images):
    """What a forward pass leaves in a loaded 4-bit model (bitsandbytes may re-pack weights on the CPU) changes
    neither its answers nor what the next load from the same checkpoint computes."""
    first = load_sam(str(tiny_checkpoint), quantization="4bit")
    inputs = first.processor(three_images, "what is shared ?")
    with torch.no_grad():
        logits = first.model(**inputs).logits
        SamPipeline(first).generate(three_images, "what is shared ?", max_new_tokens=3)
        assert torch.equal(first.model(**inputs).logits, logits)
        assert torch.equal(load_sam(str(tiny_checkpoint), quantization="4bit").model(**inputs).logits, logits)


def test_the_app_serves_the_embedded_model_in_4bit_and_says_so(app_url):
    """`python app.py` with no configuration: NF4 on this CPU, on the page and in the API's model info."""
    page = httpx.get(app_url + "config", timeout=30).json()
    model_lines = [c["props"]["value"] for c in page["components"] if str(c.get("props", {}).get("value", "")).startswith("**Model:**")]
    assert len(model_lines) == 1 and "**precision:** 4-bit NF4 language model, float32 elsewhere · **weights:**" in model_lines[0]
    assert "**SAM adapter:** in the checkpoint" in model_lines[0]
    files = [handle_file(str(Path(__file__).resolve().parent.parent / "tests" / "data" / "minilink-3" / f"{i}.png")) for i in (1, 2, 3)]
    details = json.loads(Client(app_url, verbose=False).predict(files, "Group captioning", "", "", "greedy", 4, 0, api_name="/compare")[2])
    assert details["model"]["quantization"] == "4bit" and details["model"]["precision_note"] is None
