"""SamForConditionalGeneration honours InstructBLIP's contract, in the pattern of transformers' model tests.

Single-image inputs are compared with transformers' own InstructBLIP holding the same weights (`hf_twin`); the
guided path (N = 3 images, exchange layers with random weights) must give the same kinds of outputs.
"""

import inspect

import pytest
import torch
from test_modeling import hf_twin
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
)
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.models.instructblip.modeling_instructblip import InstructBlipForConditionalGenerationModelOutput

from sam_core import SamConfig, SamForConditionalGeneration

PROMPT = "what is shared ?"
NO_DROPOUT = {"qformer_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


@pytest.fixture
def guided(make_model, processor, three_images):
    """An active SAM and a training batch of two samples with three images each (guidance acts)."""
    model = make_model(active=True)
    batch = processor([three_images, three_images[::-1]], [PROMPT, "what is it ?"], answers=["red", "a red star"])
    return model, batch


@pytest.fixture
def single(make_model, processor, three_images):
    """An active SAM, transformers' InstructBLIP with its weights, and one-image batches for each."""
    model = make_model(active=True)
    batch = processor([three_images[:1], three_images[1:2]], [PROMPT, "what is it ?"], answers=["red", "a red star"])
    plain = {**batch, "pixel_values": batch["pixel_values"][:, 0]}
    return model, hf_twin(model), batch, plain


def generation_inputs(batch):
    return {key: value for key, value in batch.items() if key != "labels"}


def assert_same_tensors(first, second, atol=0.0):
    """Two (nested) outputs hold the same tensors; Nones and non-tensors (caches, SAM's extraction) are skipped."""
    if isinstance(first, (tuple, list)):
        assert len(first) == len(second)
        for a, b in zip(first, second):
            assert_same_tensors(a, b, atol)
    elif isinstance(first, torch.Tensor):
        torch.testing.assert_close(first, second, atol=atol, rtol=0)


# ------------------------------------------------------------------ outputs


@pytest.mark.parametrize("num_images", [1, 3])
def test_output_is_instructblips_model_output(make_model, processor, three_images, num_images):
    model = make_model(active=True)
    batch = processor([three_images[:num_images]] * 2, [PROMPT, "what is it ?"], answers=["red", "a red star"])
    with torch.no_grad():
        output = model(**batch)
        as_tuple = model(**batch, return_dict=False)
    assert isinstance(output, InstructBlipForConditionalGenerationModelOutput)
    assert output[0] is output.loss and output["logits"] is output.logits and "loss" in output
    assert output.visual.guided == (num_images > 1)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(output.to_tuple())
    assert_same_tensors(as_tuple, output.to_tuple())
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(**batch), tuple)


def test_single_image_outputs_equal_instructblips(single):
    model, twin, batch, plain = single
    for attention in (model, twin):
        attention.set_attn_implementation("eager")  # attention probabilities need eager attention
    options = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        ours, theirs = model(**batch, **options), twin(**plain, **options)
        assert list(ours.keys()) == list(theirs.keys()) + ["visual"]
        assert_same_tensors(ours.to_tuple()[:-1], theirs.to_tuple(), atol=1e-6)
        assert_same_tensors(model(**batch, return_dict=False)[:-1], twin(**plain, return_dict=False), atol=1e-6)
    layers = model.config.text_config.num_hidden_layers
    assert len(ours.language_model_outputs.hidden_states) == layers + 1
    assert len(ours.language_model_outputs.attentions) == layers


def test_guided_outputs_hold_hidden_states_attentions_and_one_row_per_image(guided):
    model, batch = guided
    model.set_attn_implementation("eager")
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True, output_attentions=True)
    batch_size, seq = batch["input_ids"].shape
    text = model.config.text_config
    assert output.visual.guided
    assert len(output.language_model_outputs.hidden_states) == text.num_hidden_layers + 1
    assert output.language_model_outputs.hidden_states[-1].shape == (batch_size, seq, text.hidden_size)
    assert output.language_model_outputs.attentions[0].shape == (batch_size, text.num_attention_heads, seq, seq)
    rows = batch_size * 3
    assert torch.equal(output.vision_outputs.last_hidden_state, output.visual.patch_features.flatten(0, 1))
    assert output.vision_outputs.pooler_output.shape == (rows, model.config.vision_config.hidden_size)
    queries = model.config.num_query_tokens
    qformer = output.qformer_outputs.last_hidden_state  # (B·N, S, d)
    assert qformer.shape == (rows, queries + batch["qformer_input_ids"].shape[1], model.config.qformer_config.hidden_size)
    assert torch.equal(qformer[:, :queries], output.visual.query_states.flatten(0, 1))


def test_precomputed_extraction_is_accepted_in_both_forms(single, guided):
    model, twin, batch, plain = single
    with torch.no_grad():
        features = twin.get_image_features(plain["pixel_values"], plain["qformer_input_ids"], plain["qformer_attention_mask"])
        theirs = twin(**{**plain, "pixel_values": None}, mm_encoder_outputs={"image": features}).logits
        ours = model(**{**batch, "pixel_values": None}, mm_encoder_outputs={"image": features}).logits
    assert torch.equal(ours, theirs)
    model, batch = guided
    with torch.no_grad():
        full = model(**batch)
        again = model(**{**batch, "pixel_values": None}, visual=full.visual)
    assert torch.equal(full.logits, again.logits) and again.vision_outputs is None


# ------------------------------------------------------------------ signatures


@pytest.mark.parametrize("method", ["forward", "generate"])
def test_positional_parameters_are_the_parents(method):
    ours = inspect.signature(getattr(SamForConditionalGeneration, method)).parameters
    theirs = inspect.signature(getattr(InstructBlipForConditionalGeneration, method)).parameters
    positional = [name for name, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [name for name, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
    extras = {"patch_features", "guidance", "visual"}
    if method == "generate":
        extras |= {"visual_tokens", "new_tokens_only"}
    assert {name for name, p in ours.items() if p.kind is p.KEYWORD_ONLY} == extras


def test_positional_calls_work_like_the_parents(single, guided):
    model, twin, batch, plain = single
    order = ("pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask")
    with torch.no_grad():
        assert torch.equal(model(*(batch[k] for k in order)).logits, twin(*(plain[k] for k in order)).logits)
    greedy = {"max_new_tokens": 4, "do_sample": False}
    ours, theirs = model.generate(*(batch[k] for k in order), **greedy), twin.generate(*(plain[k] for k in order), **greedy)
    assert torch.equal(ours, theirs)
    model, batch = guided
    with torch.no_grad():
        assert torch.equal(model(*(batch[k] for k in order)).logits, model(**batch).logits)


# ------------------------------------------------------------------ generate


DECODING = {
    "greedy": {"do_sample": False},
    "sample": {"do_sample": True, "top_k": 0, "temperature": 1.0},
    "beams": {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
}


@pytest.mark.parametrize("decoding", sorted(DECODING))
def test_generate_returns_dict_outputs_like_instructblip(single, decoding):
    model, twin, batch, plain = single
    settings = {**DECODING[decoding], "max_new_tokens": 4, "return_dict_in_generate": True, "output_scores": True}
    outputs = {}
    for name, net, inputs in (("sam", model, batch), ("instructblip", twin, plain)):
        torch.manual_seed(0)
        outputs[name] = net.generate(**generation_inputs(inputs), **settings)
    kind = GenerateBeamDecoderOnlyOutput if decoding == "beams" else GenerateDecoderOnlyOutput
    assert type(outputs["sam"]) is type(outputs["instructblip"]) is kind
    assert torch.equal(outputs["sam"].sequences, outputs["instructblip"].sequences)
    assert_same_tensors(outputs["sam"].scores, outputs["instructblip"].scores, atol=1e-5)


@pytest.mark.parametrize("decoding", sorted(DECODING))
def test_guided_generate_returns_dict_outputs(guided, decoding):
    model, batch = guided
    inputs = generation_inputs(batch)
    settings = {**DECODING[decoding], "max_new_tokens": 4}
    torch.manual_seed(0)
    ids = model.generate(**inputs, **settings)
    torch.manual_seed(0)
    output = model.generate(**inputs, **settings, return_dict_in_generate=True, output_scores=True)
    rows = 2 * settings.get("num_return_sequences", 1)
    assert torch.equal(output.sequences, ids) and ids.shape[0] == rows
    prompt = inputs["input_ids"].shape[1]
    assert len(output.scores) == ids.shape[1] - prompt
    assert torch.equal(ids[:, :prompt], inputs["input_ids"].repeat_interleave(rows // 2, dim=0))
    if decoding == "beams":
        assert output.sequences_scores.shape == (rows,)
    torch.manual_seed(0)
    new = model.generate(**inputs, **settings, return_dict_in_generate=True, new_tokens_only=True)
    assert torch.equal(new.sequences, ids[:, prompt:])


def test_generate_without_a_prompt_uses_instructblips_default(single, guided):
    model, twin, batch, plain = single
    greedy = {"max_new_tokens": 3, "do_sample": False}
    ours = model.generate(batch["pixel_values"], batch["qformer_input_ids"], **greedy)
    assert torch.equal(ours, twin.generate(plain["pixel_values"], plain["qformer_input_ids"], **greedy))
    model, batch = guided
    ours = model.generate(batch["pixel_values"], batch["qformer_input_ids"], batch["qformer_attention_mask"], **greedy)
    placeholders = 3 * model.config.num_query_tokens
    assert torch.all(ours[:, :placeholders] == model.config.image_token_index)
    assert torch.all(ours[:, placeholders] == model.config.text_config.bos_token_id)


# ------------------------------------------------------------------ loss


def loss_ratio(model, batch, **extra):
    """loss(num_items_in_batch = 3 × the batch's answer tokens) / loss(): 1/3 when the loss honours it."""
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        plain = model(**batch, **extra).loss
        scaled = model(**batch, **extra, num_items_in_batch=torch.tensor(3 * answer_tokens)).loss
    return float(scaled / plain)


def test_loss_honours_num_items_in_batch_and_shift_labels_like_the_parent(single, guided):
    model, twin, batch, plain = single
    assert loss_ratio(model, batch) == pytest.approx(loss_ratio(twin, plain)) == pytest.approx(1 / 3)
    unshifted = {"shift_labels": batch["labels"]}  # taken as already shifted: a different loss
    with torch.no_grad():
        assert torch.equal(model(**batch, **unshifted).loss, twin(**plain, **unshifted).loss)
        assert not torch.equal(model(**batch, **unshifted).loss, model(**batch).loss)
    model, batch = guided
    assert loss_ratio(model, batch) == pytest.approx(1 / 3)
    shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:].contiguous()
    with torch.no_grad():
        assert torch.equal(model(**batch, shift_labels=shifted).loss, model(**batch).loss)


# ------------------------------------------------------------------ torch.compile


def test_fullgraph_compile_traces_the_guided_forward_in_one_graph(guided):
    """torch.compile(fullgraph=True) traces the whole forward, guided extraction included (a graph break raises).
    The "eager" backend checks the trace (about 20 s on this 2-core machine); inductor's code generation gave the
    same logits too but took over 7 minutes on a loaded CPU, so it is not part of the suite."""
    model, batch = guided
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(**batch)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(**batch)
    assert compiled.visual.guided
    torch.testing.assert_close(compiled.logits, eager.logits)
    torch.testing.assert_close(compiled.loss, eager.loss)


def test_eager_and_sdpa_attention_give_the_same_logits(guided):
    model, batch = guided
    with torch.no_grad():
        sdpa = model(**batch).logits
        model.set_attn_implementation("eager")
        eager = model(**batch).logits
    assert model.qformer.config._attn_implementation == "eager"
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ loading


def test_auto_classes_load_a_saved_sam(tmp_path, make_model, processor, three_images):
    model = make_model(active=True, context="others", exchange_layer=1)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SamConfig) and (config.context, config.exchange_layer) == ("others", 1)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is SamForConditionalGeneration
    inputs = generation_inputs(processor(three_images, PROMPT))
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_instructblip_checkpoint_loads_into_sam_and_back(tmp_path, make_model, processor, three_images):
    sam = make_model(active=True)
    twin = hf_twin(sam)
    sam_fields = ("context", "exchange_layer", "model_type")
    twin.config = InstructBlipConfig(**{k: v for k, v in sam.config.to_dict().items() if k not in sam_fields})
    twin.save_pretrained(tmp_path / "instructblip")
    assert AutoConfig.from_pretrained(tmp_path / "instructblip").model_type == "instructblip"
    from_plain = SamForConditionalGeneration.from_pretrained(tmp_path / "instructblip").eval()
    assert from_plain.guidance_is_identity
    sam.save_pretrained(tmp_path / "sam")
    back = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "sam").eval()
    inputs = generation_inputs(processor(three_images, PROMPT))
    one = generation_inputs(processor(three_images[:1], PROMPT))
    plain = {**one, "pixel_values": one["pixel_values"][:, 0]}
    with torch.no_grad():
        assert torch.equal(from_plain(**inputs).logits, sam(**inputs, guidance=False).logits)
        assert torch.equal(back(**plain).logits, twin(**plain).logits)


@pytest.mark.filterwarnings("ignore:The following device_map keys do not match")  # query_tokens is a parameter
def test_explicit_device_map_with_offload_generates_the_same(tmp_path, make_model, processor, three_images):
    model = make_model(active=True)
    model.save_pretrained(tmp_path / "sam")
    device_map = {name: "cpu" for name in ("vision_model", "query_tokens", "qformer", "language_projection", "guidance")}
    device_map["language_model"] = "disk"
    offloaded = SamForConditionalGeneration.from_pretrained(
        tmp_path / "sam", device_map=device_map, offload_folder=tmp_path / "offload"
    ).eval()
    assert offloaded.hf_device_map["language_model"] == "disk"
    inputs = generation_inputs(processor(three_images, PROMPT))
    greedy = {"max_new_tokens": 4, "do_sample": False}
    assert torch.equal(offloaded.generate(**inputs, **greedy), model.generate(**inputs, **greedy))


# ------------------------------------------------------------------ what already worked


def test_resized_token_embeddings_reach_logits_and_loss(guided):
    model, batch = guided
    vocab = model.config.text_config.vocab_size
    model.resize_token_embeddings(vocab + 8)
    assert model.config.text_config.vocab_size == vocab + 8
    output = model(**batch)
    assert output.logits.shape[-1] == vocab + 8 and torch.isfinite(output.loss)


def test_gradient_checkpointing_gives_the_same_gradients(make_model, processor, three_images):
    batch = processor([three_images, three_images[::-1]], [PROMPT, "what is it ?"], answers=["red", "a red star"])
    grads = []
    for checkpointing in (False, True):
        model = make_model(active=True, **NO_DROPOUT).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # transformers 5's name for gradient checkpointing
            assert model.is_activation_checkpointing
        model(**batch).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if name.startswith("guidance.")})
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads[0].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_left_padded_batch_generates_what_each_sample_does_alone(make_model, processor, three_images):
    model = make_model(active=True)
    sets, prompts = [three_images, three_images[::-1]], [PROMPT, "sum up the common factor in these three pictures ."]
    greedy = {"max_new_tokens": 5, "do_sample": False, "new_tokens_only": True}
    batch = generation_inputs(processor(sets, prompts))
    assert batch["attention_mask"][0].min() == 0  # the shorter prompt is padded
    together = model.generate(**batch, **greedy)
    for row, (images, prompt) in enumerate(zip(sets, prompts)):
        assert torch.equal(together[row], model.generate(**generation_inputs(processor(images, prompt)), **greedy)[0])


def test_beams_return_several_sequences_best_first(guided):
    model, batch = guided
    inputs = generation_inputs(batch)
    beams = {"num_beams": 3, "max_new_tokens": 4, "do_sample": False}
    several = model.generate(**inputs, **beams, num_return_sequences=3)
    best = model.generate(**inputs, **beams)
    assert several.shape[0] == 6 and torch.equal(several[::3], best)
