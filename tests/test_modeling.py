import pytest
import torch
from reference import reference_visual_tokens
from transformers import InstructBlipForConditionalGeneration

from sam_core import SamConfig


def hf_twin(model):
    """transformers' own InstructBLIP holding exactly our weights (minus SAM's adapter)."""
    twin = InstructBlipForConditionalGeneration(model.config).eval()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(key.startswith("guidance.") for key in unexpected)
    return twin


def test_single_image_baseline_matches_transformers(make_model, processor, three_images):
    model = make_model()
    twin = hf_twin(model)
    inputs = processor(three_images[:1], "what color is it ?")
    plain = {**inputs, "pixel_values": inputs["pixel_values"][:, 0]}
    with torch.no_grad():
        assert torch.equal(model(**inputs, guidance=False).logits, twin(**plain).logits)
    ours = model.generate(**inputs, guidance=False, max_new_tokens=6, do_sample=False)
    theirs = twin.generate(**plain, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours, theirs)  # InstructBLIP's convention: prompt + new ids
    new = model.generate(**inputs, guidance=False, max_new_tokens=6, do_sample=False, new_tokens_only=True)
    assert torch.equal(new, theirs[:, inputs["input_ids"].shape[1] :])


def test_multi_image_baseline_is_per_image_blocks_in_order(make_model, processor, three_images):
    model = make_model()
    twin = hf_twin(model)
    inputs = processor(three_images, "what is shared ?")
    with torch.no_grad():
        blocks = [
            twin.get_image_features(
                inputs["pixel_values"][:, i], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
            ).pooler_output
            for i in range(3)
        ]
        ours = model.extract_visual_tokens(
            inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"], guidance=False
        )
        assert torch.allclose(ours.visual_tokens, torch.stack(blocks, dim=1), atol=1e-6)

        embeds = twin.get_input_embeddings()(inputs["input_ids"])
        image_positions = inputs["input_ids"] == model.config.image_token_id
        embeds[image_positions] = torch.cat(blocks, dim=1).reshape(-1, embeds.shape[-1])
        theirs = twin.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        assert torch.allclose(model(**inputs, guidance=False).logits, theirs, atol=1e-5)
        theirs_ids = twin.language_model.generate(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], input_ids=inputs["input_ids"],
            max_new_tokens=6, do_sample=False,
        )
    assert torch.equal(model.generate(**inputs, guidance=False, max_new_tokens=6, do_sample=False), theirs_ids)


@pytest.mark.parametrize("context", ["all", "others"])
def test_zero_initialised_guidance_equals_baseline_exactly(make_model, processor, three_images, context):
    model = make_model(context=context)
    assert model.guidance_is_identity
    inputs = processor(three_images, "what is shared ?")
    with torch.no_grad():
        sam = model(**inputs, guidance=True)
        baseline = model(**inputs, guidance=False)
    assert sam.visual.guided and not baseline.visual.guided
    assert torch.equal(sam.visual.visual_tokens, baseline.visual.visual_tokens)
    assert torch.equal(sam.logits, baseline.logits)


@pytest.mark.parametrize("context", ["all", "others"])
def test_perturbing_one_image_reaches_the_others_only_through_guidance(make_model, processor, three_images, context):
    model = make_model(active=True, context=context)
    assert not model.guidance_is_identity
    inputs = processor(three_images, "what is shared ?")
    perturbed = inputs["pixel_values"].clone()
    perturbed[:, 2] = torch.randn_like(perturbed[:, 2])
    ids, mask = inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
    with torch.no_grad():
        sam, baseline = model.extract_compare(ids, mask, inputs["pixel_values"])
        sam_p, baseline_p = model.extract_compare(ids, mask, perturbed)
    assert not torch.allclose(sam.visual_tokens, baseline.visual_tokens, atol=1e-4)
    assert torch.equal(baseline.visual_tokens[:, :2], baseline_p.visual_tokens[:, :2])
    assert not torch.allclose(sam.visual_tokens[:, :2], sam_p.visual_tokens[:, :2], atol=1e-5)


def test_others_context_never_contains_the_image_itself(make_model):
    model = make_model(active=True, context="others")
    features = torch.randn(2, 4, 5, model.config.vision_config.hidden_size)
    alpha, context = model.guidance.context_features(features, "others")
    assert alpha.shape == (2, 4, 4, 5)
    assert torch.all(alpha.diagonal(dim1=1, dim2=2) == 0)
    assert torch.allclose(alpha.sum(dim=2), torch.ones(2, 4, 5))
    changed = features.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1]) * 10
    _, context_changed = model.guidance.context_features(changed, "others")
    assert torch.equal(context[:, 1], context_changed[:, 1])
    assert not torch.allclose(context[:, 0], context_changed[:, 0])


def test_all_context_is_one_softmax_over_images(make_model):
    model = make_model(active=True)
    features = torch.randn(2, 3, 5, model.config.vision_config.hidden_size)
    alpha, context = model.guidance.context_features(features, "all")
    assert alpha.shape == (2, 3, 5) and torch.allclose(alpha.sum(dim=1), torch.ones(2, 5))
    assert torch.allclose(context, (alpha[..., None] * features).sum(dim=1), atol=1e-6)


@pytest.mark.parametrize("context", ["all", "others"])
def test_single_image_falls_back_to_the_baseline(make_model, processor, three_images, context):
    model = make_model(active=True, context=context)
    inputs = processor(three_images[:1], "what is it ?")
    with torch.no_grad():
        sam = model.extract_visual_tokens(inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"])
        baseline = model.extract_visual_tokens(
            inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"], guidance=False
        )
    assert not sam.guided and sam.guidance_weights is None
    assert torch.equal(sam.visual_tokens, baseline.visual_tokens)


@pytest.mark.parametrize("context", ["all", "others"])
@pytest.mark.parametrize("exchange_layer", [3, 1, 0])
def test_batched_extraction_equals_per_image_reference(make_model, processor, context, exchange_layer):
    model = make_model(active=True, context=context, exchange_layer=exchange_layer)
    torch.manual_seed(1)
    features = torch.randn(2, 3, 17, model.config.vision_config.hidden_size)
    inputs = processor.qformer_tokenizer(
        ["what is shared ?", "sum up the common factor in these three pictures ."], padding="longest", return_tensors="pt"
    )
    with torch.no_grad():
        ours = model.extract_visual_tokens(inputs["input_ids"], inputs["attention_mask"], patch_features=features)
        expected = reference_visual_tokens(model, features, inputs["input_ids"], inputs["attention_mask"])
    assert torch.allclose(ours.visual_tokens, expected, atol=1e-5)


def test_compare_equals_separate_calls_and_pixels_equal_features(make_model, processor, three_images):
    model = make_model(active=True)
    inputs = processor(three_images, "what is shared ?")
    ids, mask, pixels = inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"]
    with torch.no_grad():
        sam, baseline = model.extract_compare(ids, mask, pixels)
        alone_sam = model.extract_visual_tokens(ids, mask, pixels, guidance=True)
        alone_base = model.extract_visual_tokens(ids, mask, pixels, guidance=False)
        from_features = model.extract_visual_tokens(ids, mask, patch_features=model.encode_images(pixels))
    assert torch.equal(sam.visual_tokens, alone_sam.visual_tokens)
    assert torch.equal(baseline.visual_tokens, alone_base.visual_tokens)
    assert torch.equal(from_features.visual_tokens, alone_sam.visual_tokens)


@pytest.mark.parametrize("context", ["all", "others"])
def test_cross_attention_maps_have_documented_shapes(make_model, processor, three_images, context):
    model = make_model(active=True, context=context)
    inputs = processor(three_images, "what is shared ?")
    config = model.config
    attention_before = model.qformer.config._attn_implementation
    with torch.no_grad():
        sam = model.extract_visual_tokens(
            inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"], output_attentions=True
        )
        plain = model.extract_visual_tokens(
            inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"]
        )
    heads, queries = config.qformer_config.num_attention_heads, config.num_query_tokens
    patches = sam.patch_features.shape[2]
    assert len(sam.image_cross_attentions) == config.qformer_config.num_hidden_layers
    for maps in (sam.image_cross_attentions, sam.context_cross_attentions):
        for layer_map in maps:
            assert layer_map.shape == (1, 3, heads, queries, patches)
            assert torch.allclose(layer_map.sum(-1), torch.ones(1, 3, heads, queries), atol=1e-5)
    expected_alpha = (1, 3, patches) if context == "all" else (1, 3, 3, patches)
    assert sam.guidance_weights.shape == expected_alpha
    assert torch.allclose(sam.visual_tokens, plain.visual_tokens, atol=1e-5)  # capturing changes nothing
    assert model.qformer.config._attn_implementation == attention_before  # eager only while capturing


def test_wrong_placeholder_count_is_a_clear_error(make_model, processor, three_images):
    model = make_model()
    inputs = processor(three_images, "what is shared ?")
    two_images = processor(three_images[:2], "what is shared ?")
    with pytest.raises(ValueError, match="image placeholder tokens"):
        model(**{**inputs, "input_ids": two_images["input_ids"], "attention_mask": two_images["attention_mask"]})


def test_config_validates_guidance_fields(hf_processor):
    from sam_core.tiny import tiny_config

    with pytest.raises(ValueError, match="context"):
        tiny_config(hf_processor, context="mine")
    with pytest.raises(ValueError, match="exchange_layer"):
        tiny_config(hf_processor, exchange_layer=7)
    assert tiny_config(hf_processor).exchange_layer == 3
    assert isinstance(tiny_config(hf_processor), SamConfig)


def test_answer_only_loss_trains_only_through_labels(make_model, processor, three_images):
    model = make_model(active=True)
    batch = processor([three_images, three_images], ["what is shared ?", "what is it ?"], answers=["red", "a red star"])
    answers = [processor.tokenizer.convert_ids_to_tokens(row[row != -100]) for row in batch["labels"]]
    assert answers == [["red", "</s>"], ["a", "red", "star", "</s>"]]
    assert torch.all(batch["labels"][:, : 3 * processor.num_query_tokens] == -100)
    output = model(**batch)
    output.loss.backward()
    assert output.loss.item() > 0
    assert model.guidance.context_to_image.weight.grad.abs().sum() > 0


def test_encoder_decoder_language_model_generates(make_model, processor, three_images):
    tokenizer = processor.tokenizer
    t5 = {
        "model_type": "t5", "vocab_size": len(tokenizer), "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
        "num_decoder_layers": 1, "num_heads": 4, "decoder_start_token_id": tokenizer.pad_token_id,
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
    }
    model = make_model(text_config=t5)
    assert not model.config.use_decoder_only_language_model
    inputs = processor(three_images, "what is shared ?")
    sam = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    baseline = model.generate(**inputs, guidance=False, max_new_tokens=4, do_sample=False, new_tokens_only=True)
    assert sam.shape == (1, 5) and sam[0, 0] == tokenizer.pad_token_id  # InstructBLIP keeps the decoder start
    assert torch.equal(sam[:, 1:], baseline)
