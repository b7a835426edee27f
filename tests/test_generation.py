import pytest

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
