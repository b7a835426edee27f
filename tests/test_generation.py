import time

import pytest
import torch

from sam_core.generation import GENERATION_PRESETS, SamPipeline, generation_kwargs
from sam_core.loading import LoadedSam, ModelInfo


@pytest.fixture
def pipeline(make_model, processor):
    def build(active=False):
        model = make_model(active=active)
        info = ModelInfo("tiny", "test", "none", "cpu", "float32", None, "all", 3, 4, model.guidance_is_identity)
        return SamPipeline(LoadedSam(model, processor, info))

    return build


def test_paper_preset_is_the_authors_settings():
    paper = generation_kwargs("paper")
    assert paper["num_beams"] == 5 and paper["max_new_tokens"] == 256 and paper["repetition_penalty"] == 1.5
    assert generation_kwargs("greedy", max_new_tokens=7, temperature=None) == {**GENERATION_PRESETS["greedy"], "max_new_tokens": 7}
    with pytest.raises(ValueError, match="unknown decoding preset"):
        generation_kwargs("fastest")


@pytest.mark.parametrize("preset", ["greedy", "sampling", "beam", "paper"])
def test_compare_gives_equal_answers_while_guidance_is_identity(pipeline, three_images, preset):
    result = pipeline().generate(three_images, "what is shared ?", preset=preset, max_new_tokens=6)
    assert result.answers["sam"].text == result.answers["baseline"].text
    assert result.answers["sam"].new_tokens > 0 and result.extraction_seconds > 0


def test_trained_guidance_changes_the_answer(pipeline, three_images):
    result = pipeline(active=True).generate(three_images, "what is shared ?", max_new_tokens=8)
    assert result.answers["sam"].text != result.answers["baseline"].text
    alone = pipeline(active=True).generate(three_images, "what is shared ?", mode="sam", max_new_tokens=8)
    assert set(alone.answers) == {"sam"} and alone.answers["sam"].text == result.answers["sam"].text


@pytest.mark.parametrize("preset", ["greedy", "sampling"])
@pytest.mark.parametrize("mode", ["baseline", "compare"])
def test_streaming_ends_with_the_full_answers(pipeline, three_images, preset, mode):
    pipe = pipeline(active=True)
    full = pipe.generate(three_images, "what is shared ?", mode=mode, preset=preset, max_new_tokens=8)
    pieces = list(pipe.stream(three_images, "what is shared ?", mode=mode, preset=preset, max_new_tokens=8))
    assert len(pieces) > 1 and pieces[-1] == {name: answer.text for name, answer in full.answers.items()}
    for name in full.answers:
        assert all(later[name].startswith(earlier[name]) for earlier, later in zip(pieces, pieces[1:]))


def test_greedy_comparison_is_one_batch_with_the_answers_of_each_mode_alone(pipeline, three_images, monkeypatch):
    pipe = pipeline(active=True)
    alone = {mode: pipe.generate(three_images, "what is shared ?", mode=mode, max_new_tokens=8).answers[mode] for mode in ("sam", "baseline")}
    batches = []
    generate = pipe.model.generate
    monkeypatch.setattr(pipe.model, "generate", lambda **kw: batches.append(kw["input_ids"].shape[0]) or generate(**kw))
    both = pipe.generate(three_images, "what is shared ?", mode="compare", max_new_tokens=8).answers
    assert batches == [2]
    assert {m: (a.text, a.new_tokens) for m, a in both.items()} == {m: (a.text, a.new_tokens) for m, a in alone.items()}
    assert both["sam"].text != both["baseline"].text


def test_streaming_refuses_beams_and_unknown_modes(pipeline, three_images):
    with pytest.raises(ValueError, match="num_beams=1"):
        next(pipeline().stream(three_images, "what ?", preset="beam"))
    with pytest.raises(ValueError, match="mode must be one of"):
        next(pipeline().stream(three_images, "what ?", mode="both"))


def test_a_failing_generation_surfaces_in_the_streaming_caller(pipeline, three_images, monkeypatch):
    pipe = pipeline()

    def broken(**_):
        raise RuntimeError("generation broke")

    monkeypatch.setattr(pipe.model, "generate", broken)
    with pytest.raises(RuntimeError, match="generation broke"):
        list(pipe.stream(three_images, "what ?", mode="compare"))


def test_closing_a_stream_stops_and_joins_its_generation(pipeline, three_images):
    """A client that leaves closes the stream: its generation must end then, not run on beside the next request."""
    pipe = pipeline(active=True)
    steps = []
    pipe.model.language_model.register_forward_hook(lambda *_: steps.append(time.sleep(0.01)))
    stream = pipe.stream(three_images, "what is shared ?", mode="compare", preset="sampling", max_new_tokens=40, min_new_tokens=40)
    next(stream)
    stream.close()
    closed_at = len(steps)
    time.sleep(0.3)
    assert len(steps) == closed_at and closed_at < 40


def test_seeded_sampling_is_untouched_by_other_use_of_the_global_random_state(pipeline, three_images):
    """Sampling draws from the request's own generator: another request (here: every step of this one) drawing
    from torch's global random state changes nothing, streamed or not."""
    pipe = pipeline(active=True)
    settings = dict(mode="compare", preset="sampling", temperature=2.0, seed=3, max_new_tokens=12)

    def answers():
        generated = {mode: answer.text for mode, answer in pipe.generate(three_images, "what is shared ?", **settings).answers.items()}
        return generated, list(pipe.stream(three_images, "what is shared ?", **settings))[-1]

    alone = answers()
    assert alone[0] == alone[1]

    def another_user_draws(*_):
        torch.rand(100)

    pipe.model.language_model.register_forward_hook(another_user_draws)
    assert answers() == alone
    assert pipe.generate(three_images, "what is shared ?", **{**settings, "seed": 4}).answers["sam"].text != alone[0]["sam"]
