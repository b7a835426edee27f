"""visualization/: shapes and normalisation of every map, grid alignment on crafted models, faithfulness
sanity checks of the attributions, the HTML/JSON report and the CLI."""

import base64
import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sam_core.generation import Answer, SamPipeline
from sam_core.loading import LoadedSam, ModelInfo
from visualization import (
    NARROW, WIDE, TokenChoice, alignment, attention_maps, capture, compare_attention, context_images,
    cross_attention_layers, explain, figure_png, guidance_maps, image_attribution, patch_attribution, plot_alignment,
    plot_attention_comparison, plot_attention_maps, plot_guidance, plot_image_attribution, plot_patch_attribution,
    word_attribution, word_highlights_html,
)
from visualization.attention import comparison_rows
from visualization.attribution import default_window, patch_rows, reference_features
from visualization.capture import Capture, token_labels
from visualization.cli import main as cli_main
from visualization.common import PANEL_PIXELS, square_image, to_grid

EXAMPLE = sorted(str(p) for p in Path("tests/data/minilink-3").glob("*.png"))
PROMPT = "what is the common shape in these pictures ?"
GRID = 4  # tiny models: 32 px images, 8 px patches
PATCHES = 1 + GRID * GRID
VISION_WIDTH = 40


@pytest.fixture(autouse=True, scope="module")
def inference_on_one_thread():
    """Views are inference only. Tiny models are overhead-bound: one thread avoids stalls when the CPU is
    shared (e.g. with a training job)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        yield
    torch.set_num_threads(threads)


def pipeline_for(model, processor) -> SamPipeline:
    info = ModelInfo(
        name="tiny", source="test", quantization="none", device="cpu", dtype="float32", adapter=None,
        context=model.config.context, exchange_layer=model.config.exchange_layer,
        num_query_tokens=model.config.num_query_tokens, guidance_identity=model.guidance_is_identity,
    )
    return SamPipeline(LoadedSam(model, processor, info))


def sensitive(model, scale: float = 10.0):
    """A random tiny Q-Former barely reads its input (0.02-scale cross-attention weights): scale them so the
    visual tokens, and so the answer, depend on the images."""
    with torch.no_grad():
        for layer in model.qformer.encoder.layer:
            if layer.has_cross_attention:
                for linear in (layer.crossattention.attention.key, layer.crossattention.attention.value, layer.crossattention.output.dense):
                    linear.weight.mul_(scale)
    return model


def scenes() -> list[Image.Image]:
    images = []
    for index, (background, shape) in enumerate([("red", "yellow"), ("navy", "white"), ("green", "black")]):
        image = Image.new("RGB", (32, 32), background)
        ImageDraw.Draw(image).rectangle((3 + 7 * index, 4, 13 + 7 * index, 22), fill=shape)
        images.append(image)
    return images


def blank_image() -> Image.Image:
    """The processor's mean colour: all-zero normalised pixels, the "blank" reference."""
    return Image.new("RGB", (32, 32), (123, 117, 104))


def run(pipeline, images, prompt=PROMPT, max_new_tokens=5) -> Capture:
    suppress = [pipeline.processor.image_token_id]
    return capture(pipeline, images, prompt, max_new_tokens=max_new_tokens, suppress_tokens=suppress)


def capture_from_features(pipeline, features: torch.Tensor, max_new_tokens: int = 4) -> Capture:
    """A Capture whose patch features are crafted (the vision encoder is bypassed)."""
    model, processor = pipeline.model, pipeline.processor
    images = [Image.new("RGB", (32, 32), "gray") for _ in range(features.shape[1])]
    inputs = pipeline.prepare(images, PROMPT)
    sam, baseline = model.extract_compare(
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"], patch_features=features, output_attentions=True
    )
    visual = {"sam": sam, "baseline": baseline}
    ids, answers, tokens = {}, {}, {}
    for mode, tokens_of_mode in visual.items():
        new = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], visual=tokens_of_mode,
            max_new_tokens=max_new_tokens, suppress_tokens=[processor.image_token_id], new_tokens_only=True,
        )[0]
        ids[mode] = new
        answers[mode] = Answer(mode, processor.decode(new[None])[0], len(new), 0.0)
        tokens[mode] = token_labels(processor.tokenizer, new.tolist())
    return Capture(images, PROMPT, inputs, visual, ids, answers, tokens, pipeline.info, 0.0)


def answer_log_probs(model, run_: Capture, mode: str, features, qformer_mask=None, attention_mask=None) -> np.ndarray:
    """(T,) log-probs of the captured answer, computed independently of visualization's scorer: re-extract from
    `features`, then one full forward pass of SamForConditionalGeneration over prompt + answer."""
    inputs, answer = run_.inputs, run_.answer_ids[mode]
    qformer_mask = inputs["qformer_attention_mask"] if qformer_mask is None else qformer_mask
    visual = model.extract_visual_tokens(inputs["qformer_input_ids"], qformer_mask, patch_features=features, guidance=mode == "sam")
    ids = torch.cat([inputs["input_ids"], answer[None, :-1]], dim=1)
    if attention_mask is None:
        attention_mask = torch.ones_like(ids)
    logits = model(qformer_input_ids=inputs["qformer_input_ids"], input_ids=ids, attention_mask=attention_mask, visual=visual).logits
    return logits[0, -len(answer):].log_softmax(-1).gather(-1, answer[:, None])[:, 0].numpy()


def one_hot_features(peaks: dict[int, tuple[int, int]], num_images: int = 3, value: float = 3.0) -> torch.Tensor:
    """(1, N, P, D) zeros but for one patch per listed image (image → (row, col)), set to `value`."""
    features = torch.zeros(1, num_images, PATCHES, VISION_WIDTH)
    for image, (row, col) in peaks.items():
        features[0, image, 1 + row * GRID + col] = value
    return features


def qformer_inputs(processor):
    inputs = processor(scenes(), PROMPT)
    return inputs["qformer_input_ids"], inputs["qformer_attention_mask"]


def argmax_cell(grid: np.ndarray) -> tuple[int, int]:
    return tuple(int(i) for i in np.unravel_index(np.argmax(grid), grid.shape))


def png_size(figure) -> tuple[int, int]:
    """The figure drawn as PNG: (width, height) in pixels (and a valid PNG, or this fails)."""
    return Image.open(io.BytesIO(figure_png(figure))).size


# ---------------------------------------------------------------------------------------------- guidance


def test_patch_order_follows_the_pixels(make_model, processor):
    """to_grid's row-major layout is the ViT's: a bright spot in pixel rows 16-23, columns 8-15 (patch row 2,
    column 1) changes exactly one patch embedding, and to_grid puts it at (2, 1)."""
    model = make_model()
    dark = Image.new("RGB", (32, 32), "black")
    spot = dark.copy()
    ImageDraw.Draw(spot).rectangle((8, 16, 15, 23), fill="white")
    embeddings = model.vision_model.embeddings(processor.pixel_values([dark, spot]))  # (2, P, D)
    change = to_grid((embeddings[1] - embeddings[0]).abs().sum(-1).numpy())  # (G, G)
    assert argmax_cell(change) == (2, 1) and np.count_nonzero(change) == 1


def test_guidance_maps_all_sum_to_one_over_images_and_keep_the_grid(make_model, processor):
    model = make_model(active=True)
    inputs = processor(scenes(), PROMPT)
    sam = model.extract_visual_tokens(inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"])
    maps = guidance_maps(sam)
    alpha = sam.guidance_weights[0].numpy()  # (N, P)
    assert maps.context == "all" and maps.maps.shape == (3, GRID, GRID)
    np.testing.assert_allclose(maps.maps.sum(axis=0), np.ones((GRID, GRID)), atol=1e-6)
    np.testing.assert_allclose(maps.image_weights.sum(), 1.0, atol=1e-6)
    assert maps.maps[2, 1, 3] == alpha[2, 1 + 1 * GRID + 3] and maps.cls.tolist() == alpha[:, 0].tolist()
    for layout in (WIDE, NARROW):
        assert png_size(plot_guidance(maps, scenes(), layout))[0] == layout.width * 100


def test_guidance_maps_others_exclude_the_target(make_model, processor):
    model = make_model(active=True, context="others")
    inputs = processor(scenes(), PROMPT)
    sam = model.extract_visual_tokens(inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"])
    maps = guidance_maps(sam)
    assert maps.context == "others" and maps.maps.shape == (3, 3, GRID, GRID)
    np.testing.assert_allclose(maps.maps.sum(axis=1), np.ones((3, GRID, GRID)), atol=1e-6)
    for target in range(3):
        assert not maps.maps[target, target].any() and maps.image_weights[target, target] == 0
    np.testing.assert_allclose(maps.image_weights.sum(axis=1), np.ones(3), atol=1e-6)
    figure = plot_guidance(maps, scenes())
    notes = [text for _, _, text, *_, box in figure.texts if box]
    assert len(notes) == 3 * 3  # each target's row of maps, each panel labelled with its mean α
    assert png_size(figure)[0] == WIDE.width * 100
    assert context_images(scenes(), maps).shape == (3, PANEL_PIXELS, PANEL_PIXELS, 3)


def test_guidance_peak_and_context_image_line_up_with_the_grid(make_model, processor):
    model = make_model()
    with torch.no_grad():  # the scorer reads feature 0 only: image 1's patch (2, 1) wins its position
        model.guidance.patch_scorer.weight.zero_()
        model.guidance.patch_scorer.weight[0, 0] = 10.0
        model.guidance.patch_scorer.bias.zero_()
    features = torch.zeros(1, 3, PATCHES, VISION_WIDTH)
    features[0, 1, 1 + 2 * GRID + 1, 0] = 5.0
    sam, _ = model.extract_compare(*qformer_inputs(processor), patch_features=features)
    maps = guidance_maps(sam)
    assert argmax_cell(maps.maps[1]) == (2, 1) and maps.maps[1, 2, 1] > 0.99
    np.testing.assert_allclose(maps.maps[:, 0, 0], [1 / 3] * 3, atol=1e-6)
    blend = context_images(scenes(), maps, size=32)[0]  # (32, 32, 3); cell (2, 1) is rows 16-23, cols 8-15
    np.testing.assert_allclose(blend[16:24, 8:16], square_image(scenes()[1], 32)[16:24, 8:16], atol=1)
    mean = np.mean([square_image(image, 32).astype(float) for image in scenes()], axis=0)
    np.testing.assert_allclose(blend[0:8, 0:8], mean[0:8, 0:8], atol=1)


def test_baseline_and_single_images_have_no_guidance(make_model, processor):
    model = make_model(active=True)
    ids, mask = qformer_inputs(processor)
    baseline = model.extract_visual_tokens(ids, mask, patch_features=torch.randn(1, 3, PATCHES, VISION_WIDTH), guidance=False)
    with pytest.raises(ValueError, match="no guidance"):
        guidance_maps(baseline)
    with pytest.raises(ValueError, match="no guidance"):
        guidance_maps(model.extract_visual_tokens(ids, mask, patch_features=torch.randn(1, 1, PATCHES, VISION_WIDTH)))


# ---------------------------------------------------------------------------------------------- attention


def crafted_attention(model):
    """Every cross-attention layer scores a patch by the mean of its features (constant query, averaging key),
    so the queries look at the patch whose features are largest."""
    with torch.no_grad():
        for layer in model.qformer.encoder.layer:
            if layer.has_cross_attention:
                attention = layer.crossattention.attention
                attention.query.weight.zero_()
                attention.query.bias.fill_(1.0)
                attention.key.weight.fill_(1.0 / VISION_WIDTH)
                attention.key.bias.zero_()
    return model


def test_attention_argmax_finds_the_crafted_patch_in_every_layer_head_and_query(make_model, processor):
    model = crafted_attention(make_model(active=True))
    peaks = {0: (0, 3), 1: (2, 1), 2: (3, 0)}
    sam, baseline = model.extract_compare(*qformer_inputs(processor), patch_features=one_hot_features(peaks), output_attentions=True)
    assert cross_attention_layers(sam) == [0, 1, 2, 3]
    for visual in (sam, baseline):
        for layer in cross_attention_layers(visual):
            for head, query in (("mean", "mean"), (2, 1), ("max", 3)):
                maps = attention_maps(visual, "image", layer, head, query)
                for image, cell in peaks.items():
                    assert argmax_cell(maps.maps[image]) == cell
                    assert maps.maps[image][cell] > 0.9


def test_context_stream_attends_to_the_other_images_peaks(make_model, processor):
    model = crafted_attention(make_model(context="others"))  # near-uniform α: both sources feed the context
    peaks = {0: (0, 3), 1: (2, 1), 2: (3, 0)}
    sam, _ = model.extract_compare(*qformer_inputs(processor), patch_features=one_hot_features(peaks), output_attentions=True)
    context = attention_maps(sam, "context", layer=0)
    maps = context.maps  # (N, G, G): image t's context pools the others
    for target, cell in peaks.items():
        others = [peaks[s] for s in peaks if s != target]
        assert maps[target][cell] < 0.05  # its own peak is not in its context
        assert all(maps[target][other] > 0.2 for other in others)
    pictures = context_images(scenes(), guidance_maps(sam))
    assert pictures.shape == (3, PANEL_PIXELS, PANEL_PIXELS, 3) and png_size(plot_attention_maps(context, list(pictures)))


def test_attention_normalisation_selection_and_shared_scale(make_model, processor):
    model = sensitive(make_model(active=True))
    inputs = processor(scenes(), PROMPT)
    sam, baseline = model.extract_compare(
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"], output_attentions=True
    )
    mean = attention_maps(sam, head="mean", query="mean")
    assert mean.layer == 3 and mean.maps.shape == (3, GRID, GRID)
    np.testing.assert_allclose(mean.maps.sum(axis=(1, 2)) + mean.cls, np.ones(3), atol=1e-5)
    one = attention_maps(sam, head=1, query=2)
    np.testing.assert_allclose(one.maps.sum(axis=(1, 2)) + one.cls, np.ones(3), atol=1e-5)
    assert np.all(attention_maps(sam, head="max").maps >= mean.maps - 1e-7)
    raw = sam.image_cross_attentions[2][0, :, 1, 2].numpy()  # (N, P) for head 1, query 2
    np.testing.assert_allclose(attention_maps(sam, layer=2, head=1, query=2).maps, to_grid(raw))
    comparison = compare_attention(sam, baseline)
    np.testing.assert_allclose(comparison.difference, comparison.sam.maps - comparison.baseline.maps)
    assert np.abs(comparison.difference).max() > 1e-4  # guidance acts before the last layer's cross-attention
    assert comparison.vmax == pytest.approx(max(comparison.sam.maps.max(), comparison.baseline.maps.max()))
    sam_row, baseline_row, difference_row = comparison_rows(comparison)  # what plot_attention_comparison draws
    assert sam_row.scale == baseline_row.scale and (sam_row.scale.low, sam_row.scale.high) == (0.0, comparison.vmax)
    assert difference_row.scale.low == -difference_row.scale.high < 0 and difference_row.scale.signed
    assert png_size(plot_attention_comparison(comparison, scenes(), NARROW))[0] == NARROW.width * 100
    for bad in ({"head": 9}, {"query": 7}, {"head": "median"}):
        with pytest.raises(ValueError):
            attention_maps(sam, **bad)
    with pytest.raises(ValueError, match="without guidance"):
        attention_maps(baseline, "context")


def test_layers_without_cross_attention_are_skipped(make_model, processor):
    model = make_model(active=True, qformer_config={"cross_attention_frequency": 2})
    sam, baseline = model.extract_compare(*qformer_inputs(processor), patch_features=torch.randn(1, 3, PATCHES, VISION_WIDTH), output_attentions=True)
    assert cross_attention_layers(sam) == cross_attention_layers(baseline) == [0, 2]
    assert cross_attention_layers(sam, "context") == [0, 2]
    assert attention_maps(sam).layer == 2
    with pytest.raises(ValueError, match=r"choose from \[0, 2\]"):
        attention_maps(sam, layer=1)
    no_maps = model.extract_visual_tokens(*qformer_inputs(processor), patch_features=torch.randn(1, 3, PATCHES, VISION_WIDTH))
    with pytest.raises(ValueError, match="output_attentions=True"):
        attention_maps(no_maps)


# ---------------------------------------------------------------------------------------------- attribution


@pytest.fixture
def active_pipeline(make_model, processor):
    return pipeline_for(sensitive(make_model(active=True)), processor)


def test_scores_are_teacher_forced_log_probs_of_the_generated_answer(active_pipeline):
    run_ = run(active_pipeline, scenes())
    model = active_pipeline.model
    for mode in ("sam", "baseline"):
        result = image_attribution(active_pipeline, run_, mode)
        answer = run_.answer_ids[mode]
        assert result.scores.shape == (1 + len(answer), 3) and result.log_probs.shape == (1 + len(answer),)
        np.testing.assert_allclose(result.scores[0], result.scores[1:].sum(axis=0), atol=1e-4)
        # Step-by-step reference: the log-prob of each generated token given the prompt and the tokens before it.
        inputs = run_.inputs
        expected = []
        for step in range(len(answer)):
            ids = torch.cat([inputs["input_ids"], answer[None, :step]], dim=1)
            logits = model(qformer_input_ids=inputs["qformer_input_ids"], input_ids=ids, visual=run_.visual[mode]).logits
            log_probs = logits[0, -1].log_softmax(-1)
            allowed = log_probs.clone()
            allowed[active_pipeline.processor.image_token_id] = -torch.inf  # suppressed while generating
            assert int(allowed.argmax()) == int(answer[step])  # greedy: the generated token is the argmax
            expected.append(float(log_probs[answer[step]]))
        np.testing.assert_allclose(result.log_probs[1:], expected, atol=1e-4)


def test_encoder_decoder_language_models_are_teacher_forced_through_the_decoder(make_model, processor):
    tokenizer = processor.tokenizer
    t5 = {
        "model_type": "t5", "vocab_size": len(tokenizer), "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
        "num_heads": 4, "decoder_start_token_id": tokenizer.pad_token_id, "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    model = sensitive(make_model(active=True, use_decoder_only_language_model=False, text_config=t5))
    pipeline = pipeline_for(model, processor)
    run_ = run(pipeline, scenes(), max_new_tokens=4)
    result = image_attribution(pipeline, run_, "sam")
    answer, inputs = run_.answer_ids["sam"], run_.inputs
    np.testing.assert_allclose(result.scores[0], result.scores[1:].sum(axis=0), atol=1e-4)
    expected = []
    for step in range(len(answer)):
        decoder_ids = torch.cat([torch.tensor([[tokenizer.pad_token_id]]), answer[None, :step]], dim=1)
        logits = model(
            qformer_input_ids=inputs["qformer_input_ids"], input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"], visual=run_.visual["sam"], decoder_input_ids=decoder_ids,
        ).logits
        expected.append(float(logits[0, -1].log_softmax(-1)[answer[step]]))
    np.testing.assert_allclose(result.log_probs[1:], expected, atol=1e-4)
    assert word_attribution(pipeline, run_, "sam").scores.shape == (1 + len(answer), len(PROMPT.split()))


def test_capture_answers_equal_the_pipeline_answers(active_pipeline):
    """The extraction kept for the views is the one the answers came from: same answers as SamPipeline."""
    images = scenes()
    reference = active_pipeline.generate(images, PROMPT, max_new_tokens=5, suppress_tokens=[active_pipeline.processor.image_token_id])
    run_ = run(active_pipeline, images)
    assert {mode: a.text for mode, a in run_.answers.items()} == {mode: a.text for mode, a in reference.answers.items()}
    assert run_.answers["sam"].text != run_.answers["baseline"].text  # active guidance changes the answer
    sam_only = capture(active_pipeline, images, PROMPT, modes=("sam",), max_new_tokens=5, suppress_tokens=[active_pipeline.processor.image_token_id])
    assert list(sam_only.visual) == ["sam"] and sam_only.answers["sam"].text == run_.answers["sam"].text
    with pytest.raises(ValueError, match="modes"):
        capture(active_pipeline, images, PROMPT, modes=("both",))


def test_blanking_an_image_drives_its_attribution_to_zero(active_pipeline):
    images = scenes()
    images[2] = blank_image()
    run_ = run(active_pipeline, images)
    for mode in ("sam", "baseline"):
        scores = image_attribution(active_pipeline, run_, mode).scores
        # Not exactly 0: uint8 pixels cannot hit the mean colour exactly (≈ 0.003 off in normalised units).
        assert np.abs(scores[:, 2]).max() < 0.05 * np.abs(scores[:, :2]).max()
        assert np.abs(scores[:, :2]).max() > 1e-2


def test_sam_image_ablation_goes_through_the_guidance(active_pipeline):
    run_ = run(active_pipeline, scenes())
    model = active_pipeline.model
    result = image_attribution(active_pipeline, run_, "sam")
    reference = reference_features(model, run_, "sam", "blank")
    features = run_.visual["sam"].patch_features.clone()
    features[0, 1] = reference[0, 0]  # blank image 2 by hand, re-extract with guidance
    ablated = answer_log_probs(model, run_, "sam", features)
    np.testing.assert_allclose(result.scores[1:, 1], result.log_probs[1:] - ablated, atol=1e-4)
    ids, mask = run_.inputs["qformer_input_ids"], run_.inputs["qformer_attention_mask"]
    original = run_.visual["sam"].visual_tokens[0, 0]
    guided = model.extract_visual_tokens(ids, mask, patch_features=features).visual_tokens[0, 0]
    independent = model.extract_visual_tokens(ids, mask, patch_features=features, guidance=False).visual_tokens[0, 0]
    assert (guided - original).abs().max() > 1e-3  # SAM: image 1's tokens change when image 2 is blanked
    torch.testing.assert_close(independent, run_.visual["baseline"].visual_tokens[0, 0])  # baseline: they do not


def test_patch_attribution_lines_up_with_the_grid(make_model, processor):
    pipeline = pipeline_for(sensitive(make_model(active=True)), processor)
    features = torch.zeros(1, 3, PATCHES, VISION_WIDTH)
    features[0, 1, 1 + 1 * GRID + 2] = torch.randn(VISION_WIDTH, generator=torch.Generator().manual_seed(0)) * 5
    run_ = capture_from_features(pipeline, features)
    for mode in ("sam", "baseline"):
        result = patch_attribution(pipeline, run_, mode, reference="zeros")
        assert result.scores.shape == (1 + len(run_.answer_ids[mode]), 3, GRID, GRID) and result.window == 1
        maps = np.abs(result.scores)  # occluding a zero patch with zeros changes nothing
        assert argmax_cell(maps[0, 1]) == (1, 2) and maps[0, 1, 1, 2] > 1e-3
        maps[:, 1, 1, 2] = 0
        assert maps.max() < 1e-5
        blocks = patch_attribution(pipeline, run_, mode, window=2, reference="zeros").maps()  # (N, G, G)
        assert np.all(blocks[1, 0:2, 2:4] == blocks[1, 0, 2]) and abs(blocks[1, 0, 2]) > 1e-3
        assert np.abs(blocks[1, 2:, :]).max() < 1e-5 and np.abs(blocks[[0, 2]]).max() < 1e-5


def test_attributions_are_deterministic_and_independent_of_batching(active_pipeline):
    run_ = run(active_pipeline, scenes())
    first = patch_attribution(active_pipeline, run_, "sam", perturbations_per_eval=16).scores
    again = patch_attribution(active_pipeline, run_, "sam", perturbations_per_eval=16).scores
    one_by_one = patch_attribution(active_pipeline, run_, "sam", perturbations_per_eval=1).scores
    assert np.array_equal(first, again)
    np.testing.assert_allclose(first, one_by_one, atol=1e-4)
    assert np.abs(first).max() > 1e-3


def test_randomising_the_model_changes_the_maps(make_model, processor):
    """Adebayo et al.'s model-randomisation check: maps that survive re-drawn weights explain nothing."""
    trained_like = pipeline_for(sensitive(make_model(seed=0, active=True)), processor)
    randomised = pipeline_for(sensitive(make_model(seed=0, active=True)), processor)
    with torch.no_grad():  # re-draw the Q-Former (same scale), keep the vision encoder and the LLM
        generator = torch.Generator().manual_seed(123)
        for param in randomised.model.qformer.encoder.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * param.std())
    runs = [run(p, scenes()) for p in (trained_like, randomised)]
    attention = [attention_maps(r.visual["sam"]).maps for r in runs]
    assert np.abs(attention[0] - attention[1]).max() > 0.1 * attention[0].max()
    patches = [patch_attribution(p, r, "baseline").maps() for p, r in zip((trained_like, randomised), runs)]
    correlation = np.corrcoef(patches[0].ravel(), patches[1].ravel())[0, 1]
    assert correlation < 0.9


def test_word_attribution_masks_the_word_in_the_prompt_and_the_instruction(active_pipeline):
    run_ = run(active_pipeline, scenes())
    result = word_attribution(active_pipeline, run_, "sam")
    assert result.words == PROMPT.split() and "".join(result.pieces) == PROMPT
    assert result.scores.shape == (1 + len(run_.answer_ids["sam"]), len(result.words))
    # By hand: "shape" is one token for both word-level tokenizers; mask it in both sequences.
    processor = active_pipeline.processor
    qformer_ids = run_.inputs["qformer_input_ids"]
    qformer_mask = (qformer_ids != processor.qformer_tokenizer.convert_tokens_to_ids("shape")).long()
    llm_ids = torch.cat([run_.inputs["input_ids"], run_.answer_ids["sam"][None, :-1]], dim=1)
    attention_mask = (llm_ids != processor.tokenizer.convert_tokens_to_ids("shape")).long()
    assert int((attention_mask == 0).sum()) == 1 and int((qformer_mask == 0).sum()) == 1
    features = run_.visual["sam"].patch_features
    ablated = answer_log_probs(active_pipeline.model, run_, "sam", features, qformer_mask, attention_mask)
    np.testing.assert_allclose(result.scores[1:, result.words.index("shape")], result.log_probs[1:] - ablated, atol=1e-4)
    assert np.abs(result.scores).max() > 1e-3


def test_progress_hook_reaches_one(active_pipeline):
    run_ = run(active_pipeline, scenes())
    seen = []
    image_attribution(active_pipeline, run_, "baseline", perturbations_per_eval=1, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert len(seen) == 4 and fractions == sorted(fractions) and fractions[-1] == 1.0 and "images" in seen[0][1]


def test_token_choice_pairs_the_same_word_or_says_the_baseline_has_none():
    sam, baseline = ["every", "picture", "shows", "a", "red", "star", "."], ["every", "picture", "shows", "a", "blue", "star", "."]
    whole = TokenChoice.of(sam, baseline, None)
    assert (whole.row("sam"), whole.row("baseline")) == (0, 0) and whole.label("sam") == "the whole answer"
    star = TokenChoice.of(sam, baseline, 5)
    assert (star.row("sam"), star.row("baseline")) == (6, 6) and star.label("baseline") == "token 6 “star”"
    red = TokenChoice.of(sam, baseline, 4)
    assert red.row("sam") == 5 and red.row("baseline") is None and red.baseline_missing
    assert red.label("baseline") == "no “red” in its answer"
    repeated = TokenChoice.of(["a", "star", "a", "star"], ["star", "a", "a"], 2)  # SAM's second "a": the baseline's second
    assert repeated.baseline == 2


def test_attribution_views_follow_the_token_choice_on_one_scale(active_pipeline):
    run_ = run(active_pipeline, scenes())
    sam_tokens, baseline_tokens = run_.tokens["sam"], run_.tokens["baseline"]
    images = {mode: image_attribution(active_pipeline, run_, mode) for mode in ("sam", "baseline")}
    patches = {mode: patch_attribution(active_pipeline, run_, mode) for mode in ("sam", "baseline")}
    whole, first = TokenChoice(), TokenChoice.of(sam_tokens, baseline_tokens, 0)
    rows = patch_rows(patches["sam"], patches["baseline"], first)
    assert len({row.scale for row in rows}) == 1 and rows[0].scale.signed  # SAM and baseline: one symmetric scale
    np.testing.assert_array_equal(rows[0].maps, patches["sam"].maps(0))
    for plot, attributions in ((plot_image_attribution, images), (plot_patch_attribution, patches)):
        extra = (run_.images,) if plot is plot_patch_attribution else ()
        drawn = {choice: figure_png(plot(attributions["sam"], attributions["baseline"], *extra, choice)) for choice in (whole, first)}
        assert drawn[whole] != drawn[first]  # the figure shows the chosen token, not always the whole answer
    words = {mode: word_attribution(active_pipeline, run_, mode) for mode in ("sam", "baseline")}
    page = word_highlights_html(words, first)
    shown = [words[mode].scores[first.row(mode)] for mode in ("sam", "baseline") if first.row(mode) is not None]
    limit = max(float(np.abs(row).max()) for row in shown)
    assert f"+{limit:.2g}" in page and "token 1" in page  # one legend, in Δ log p, for both modes


def test_default_patch_window_comes_from_the_grid_and_finds_the_crafted_cell(make_model, processor):
    """An 8 × 8 patch grid gets 2 × 2-patch blocks (4 × 4 per image); the one informative patch still puts the
    peak on its block, and every patch of that block shows the same score."""
    pipeline = pipeline_for(sensitive(make_model(active=True)), processor)
    side = 8
    features = torch.zeros(1, 3, 1 + side * side, VISION_WIDTH)
    features[0, 2, 1 + 5 * side + 2] = torch.randn(VISION_WIDTH, generator=torch.Generator().manual_seed(1)) * 5  # patch (5, 2)
    run_ = capture_from_features(pipeline, features)
    assert default_window(side) == 2 and default_window(4) == 1 and default_window(16) == 4
    result = patch_attribution(pipeline, run_, "baseline", reference="zeros")
    maps = np.abs(result.maps())  # (N, 8, 8)
    assert result.window == 2 and argmax_cell(maps[2]) in {(4, 2), (4, 3), (5, 2), (5, 3)}
    assert np.all(maps[2, 4:6, 2:4] == maps[2, 4, 2]) and maps[2, 4, 2] > 1e-3
    maps[2, 4:6, 2:4] = 0
    assert maps.max() < 1e-5


# ---------------------------------------------------------------------------------------------- alignment


def test_alignment_matrix_and_score(make_model, processor):
    model = sensitive(make_model(active=True))
    images = scenes()
    images[2] = images[0].copy()  # a duplicate: its baseline tokens equal image 1's
    inputs = processor(images, PROMPT)
    sam, baseline = model.extract_compare(inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"])
    for visual in (sam, baseline):
        result = alignment(visual)
        assert result.similarity.shape == (3, 3)
        np.testing.assert_allclose(np.diag(result.similarity), np.ones(3), atol=1e-5)
        np.testing.assert_allclose(result.similarity, result.similarity.T, atol=1e-6)
        off = result.similarity[~np.eye(3, dtype=bool)]
        assert result.score == pytest.approx(off.mean(), abs=1e-6)
    assert alignment(baseline).similarity[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert alignment(baseline).similarity[0, 1] < 0.99
    assert alignment(sam).score != pytest.approx(alignment(baseline).score, abs=1e-4)
    assert png_size(plot_alignment(alignment(sam), alignment(baseline), NARROW))[0] == NARROW.width * 100
    single = model.extract_visual_tokens(inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"][:, :1])
    assert np.isnan(alignment(single).score)


# ---------------------------------------------------------------------------------------------- report and CLI


class StrictHTML(HTMLParser):
    """Checks that every non-void element is closed in order and collects ids and image sources."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.ids, self.images, self.scripts, self.errors = [], set(), [], [], []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag not in self.VOID:
            self.stack.append(tag)
        self.in_script = tag == "script"

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)
        self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.scripts.append(data)


def test_report_writes_valid_html_with_every_section_and_the_json(active_pipeline, tmp_path):
    steps = []
    report = explain(active_pipeline, scenes(), PROMPT, max_new_tokens=4, progress=lambda f, m: steps.append(f))
    page, numbers = report.write(tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    parser = StrictHTML()
    parser.feed(text)
    parser.close()
    assert text.startswith("<!DOCTYPE html>") and not parser.errors and not parser.stack
    sections = {"summary", "guidance", "attention", "image-attribution", "patch-attribution", "word-attribution", "alignment", "data"}
    assert sections <= parser.ids
    assert len(parser.images) == 3 + 6  # the thumbnails and the six figures, all embedded
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="(?!data:|#)', text) and "<link" not in text  # self-contained
    embedded = json.loads(parser.scripts[-1])
    written = json.loads(numbers.read_text())
    assert embedded == written
    for key in ("answers", "guidance", "attention", "context_attention", "image_attribution", "patch_attribution", "word_attribution", "alignment"):
        assert written[key] is not None, key
    assert np.array(written["image_attribution"]["sam"]["scores"]).shape == (1 + len(report.capture.answer_ids["sam"]), 3)
    assert np.array(written["guidance"]["maps"]).shape == (3, GRID, GRID)
    assert written["answers"]["sam"]["text"] == report.capture.answers["sam"].text
    assert steps == sorted(steps) and steps[-1] == 1.0


def test_report_for_a_single_image_has_no_guidance(make_model, processor, tmp_path):
    pipeline = pipeline_for(make_model(), processor)
    report = explain(pipeline, scenes()[:1], PROMPT, max_new_tokens=2)
    assert report.guidance is None and report.context_attention is None
    page, numbers = report.write(tmp_path / "single.html")
    assert "Guidance needs two or more images" in page.read_text() and json.loads(numbers.read_text())["alignment"]["sam"]["score"] is None


def test_cli_explains_the_shipped_example_end_to_end(tmp_path):
    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "visualization", "explain", "--images", *EXAMPLE, "--prompt", "what do these pictures share ?",
         "--max-new-tokens", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "guidance is the identity" not in done.stderr and "wrote" in done.stdout  # the shipped SAM adapter is trained
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["images"] == ["1.png", "2.png", "3.png"] and data["model"]["source"] == "embedded"
    assert 'id="word-attribution"' in out.read_text()


def test_cli_bad_input_is_one_readable_line_and_exit_2(tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    assert cli_main(["explain", "--images", str(fake), "--prompt", "x", "--out", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip() == "error: fake.png: not a readable image (UnidentifiedImageError)"
    assert cli_main(["explain", "--images", *EXAMPLE, "--prompt", "x", "--max-new-tokens", "0", "--out", "r.html"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-new-tokens must be at least 1"
    missing = tmp_path / "no" / "such" / "r.html"  # refused before any model is loaded
    assert cli_main(["explain", "--images", *EXAMPLE, "--prompt", "x", "--out", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing.parent}: no such directory for --out"
    assert cli_main(["explain", "--images", *EXAMPLE, "--prompt", "x", "--out", str(tmp_path / "r.json")]) == 2
    assert "JSON is written next to it" in capsys.readouterr().err
