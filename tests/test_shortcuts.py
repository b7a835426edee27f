"""The no-binding shortcut rules and their rows in the evaluation, on hand-built groups and on MiniLINK splits."""

import json

import pytest
from PIL import Image

from sam_core.data import MiniLink, MiniLinkConfig, MiniLinkSample, SceneObject
from sam_core.evaluate import Prediction, main, summarise
from sam_core.shortcuts import BY_PLACE, NO_BINDING, Candidates, answers, chance, shortcut_rules

GROUP_PROMPT = "Sum up the common factor in these three pictures in a single statement."


def obj(name: str, cell: tuple[int, int] = (0, 0)) -> SceneObject:
    colour, shape = name.split()
    x, y = 21 * cell[1], 21 * cell[0]
    return SceneObject(colour, shape, cell, (x, y, x + 15, y + 15))


def group(scenes: list[list[SceneObject]], linked: str = "red star", task: str = "group",
          instruction: str = GROUP_PROMPT, output: str | None = None) -> MiniLinkSample:
    output = output or f"every picture shows a {linked} ."
    images = [Image.new("RGB", (64, 64)) for _ in scenes]
    return MiniLinkSample("h-0", task, images, instruction, output, linked, scenes)


# Version-1-like: the linked colour and shape are the frequent ones (an alike distractor shares each).
FREQUENT = group([
    [obj("red star", (0, 0)), obj("blue circle", (0, 1)), obj("green ring", (0, 2)), obj("red moon", (1, 0))],
    [obj("red star", (1, 1)), obj("blue heart", (0, 1)), obj("pink ring", (2, 2)), obj("cyan star", (2, 0))],
    [obj("red star", (2, 2)), obj("blue cross", (0, 0)), obj("white ring", (1, 2))],
])
# Version-2-like: blue and ring are as frequent as red and star in every image; the linked object sits centrally.
BALANCED = group([
    [obj("red star", (1, 1)), obj("blue circle", (0, 0)), obj("green ring", (2, 2))],
    [obj("red star", (1, 1)), obj("blue heart", (0, 2)), obj("pink ring", (2, 0))],
    [obj("red star", (1, 1)), obj("blue cross", (2, 2)), obj("white ring", (0, 0))],
])


def rule(name: str, config=MiniLinkConfig()):
    return shortcut_rules(config, train_size=200)[name]


def test_counting_names_the_frequent_attributes_and_ties_when_they_are_balanced():
    counting = rule(f"{NO_BINDING}: most frequent (counting)")
    assert counting(FREQUENT) == Candidates(["red"], ["star"])
    assert rule(f"{NO_BINDING}: least frequent")(FREQUENT) == Candidates(["blue"], ["ring"])
    assert counting(BALANCED) == Candidates(["blue", "red"], ["ring", "star"]) == chance(BALANCED)
    assert rule(f"{NO_BINDING}: majority in each image")(BALANCED) == chance(BALANCED)


def test_a_rule_that_sees_places_binds_by_place():
    """The linked colour and shape share a cell (they are one object); the decoys never do: a rule that sees where
    colours and shapes sit can pair them, which is binding within an image, not a bag rule."""
    assert rule(f"{BY_PLACE}: most central")(BALANCED) == Candidates(["red"], ["star"])


def test_answers_follow_each_tasks_template():
    assert answers(FREQUENT, Candidates(["red"], ["star", "moon"])) == [
        "every picture shows a red star .", "every picture shows a red moon ."]
    story = group(BALANCED.scenes, task="story", output="kiki the red star .",
                  instruction="With the narratives ...?{image#1}Caption#1:kiki runs .{image#2}Caption#2:kiki sleeps .{image#3}Caption#3:")
    assert answers(story, Candidates(["red"], ["star"])) == ["kiki the red star ."]
    version_1 = group(BALANCED.scenes, task="story", output="kiki the red star is at the middle .", instruction=story.instruction)
    assert answers(version_1, Candidates(["red", "blue"], ["star"])) == [
        "kiki the red star is at the middle .", "kiki the blue star is at the middle ."]
    question = group(BALANCED.scenes, task="question", instruction="What colour is the shape that is in every picture?", output="red .")
    assert answers(question, Candidates(["red", "blue"], ["star"])) == ["red .", "blue ."]


def test_rule_rows_are_scored_in_expectation_over_their_ties():
    """A rule tied over the four colour-shape pairs scores 25% and the mean of its four answers' CIDEr."""
    predictions, shortcuts = [], {"tied": {}, "right": {}}
    for k, (linked, decoy) in enumerate([("red star", "blue ring"), ("green moon", "pink cross"), ("white heart", "cyan square")]):
        (colour, shape), (decoy_colour, decoy_shape) = linked.split(), decoy.split()
        reference = f"every picture shows a {linked} ."
        predictions.append(Prediction(f"h-{k}", "group", linked, reference, {"sam": reference, "baseline": f"every picture shows a {decoy} ."}))
        shortcuts["tied"][f"h-{k}"] = answers(FREQUENT, Candidates([colour, decoy_colour], [shape, decoy_shape]))
        shortcuts["right"][f"h-{k}"] = [reference]
    rows = {r["mode"]: r for r in summarise(predictions, meteor=False, shortcuts=shortcuts)}
    assert rows["rule: tied"]["accuracy"] == 25.0 and rows["rule: right"]["accuracy"] == 100.0
    assert rows["rule: right"]["cider"] == pytest.approx(rows["sam"]["cider"])
    assert rows["sam"]["cider"] > rows["rule: tied"]["cider"] > rows["baseline"]["cider"]
    assert rows["rule: tied"]["sam_accuracy_gain"][0] == 75.0 and rows["baseline"]["sam_accuracy_gain"][0] == 100.0
    assert rows["rule: right"]["sam_cider_ratio"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("version", [1, 2])
def test_on_version_2_every_no_binding_rule_is_exactly_at_chance(version):
    """Version 2 ties every bag rule on every sample (chance: 25% for the colour-shape pair); version 1 lets
    counting win."""
    config = MiniLinkConfig(version=version, decoys=version == 1, tasks=("group",))
    dataset = MiniLink(2, 60, config)
    rules = {name: rule for name, rule in shortcut_rules(config, train_size=200).items() if name.startswith(NO_BINDING)}
    counting_right = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        picked = {name: rule(sample) for name, rule in rules.items()}
        if version == 2:
            assert all(candidates == chance(sample) for candidates in picked.values())
        counting = picked[f"{NO_BINDING}: most frequent (counting)"]
        colour, shape = sample.linked.split()
        counting_right += (colour in counting.colours) * (shape in counting.shapes) / len(counting.colours) / len(counting.shapes)
    if version == 1:
        assert counting_right > 0.4 * len(dataset)


def test_the_shortcut_evaluator_prints_every_rule_with_chance(tmp_path):
    """`python -m sam_core.evaluate --shortcuts`: the rules alone, every task, chance stated (25% for the colour-shape
    pair, 50% for one attribute, where every no-binding rule sits on version 2)."""
    main(["--shortcuts", "--size", "30", "--no-meteor", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())
    no_binding = [r for r in rows if r["mode"].startswith(f"rule: {NO_BINDING}")]
    assert {r["task"] for r in no_binding} == {"group", "story", "question"} and len(no_binding) == 15
    assert all(r["accuracy"] == (50.0 if r["task"] == "question" else 25.0) for r in no_binding)
    assert any(r["mode"].startswith(f"rule: {BY_PLACE}") for r in rows)
    assert "Chance is 25%" in (tmp_path / "results.md").read_text()
