"""The app's examples say what they show: each one's stated outcome (SAM right or wrong, the baseline right or
wrong) holds on the shipped checkpoint with the examples' decoding. When the checkpoint changes, re-select them:
`python -m app.examples`."""

import json
from pathlib import Path

import pytest
from PIL import Image

from app.domain import check_domain
from app.examples import EXAMPLES_DIR, SLOTS, answer_example, load_examples, outcome
from app.service import SamService
from app.settings import AppSettings
from sam_core.processing import group_caption_prompt, question_prompt, storytelling_prompt

EXAMPLES = load_examples()


@pytest.fixture(scope="module")
def service():
    return SamService(AppSettings.from_env())


def prompt_of(example) -> str:
    if example.task == "Group captioning":
        return group_caption_prompt(len(example.images))
    if example.task == "Storytelling":
        return storytelling_prompt(example.captions)
    return question_prompt(example.question)


def test_every_slot_has_its_example_and_each_states_what_it_shows():
    assert [example.name for example in EXAMPLES] == [slot.name for slot in SLOTS]
    for example in EXAMPLES:
        entry = json.loads((EXAMPLES_DIR / example.name / "example.json").read_text())[0]
        assert example.reference and example.shows and set(example.outcome) == {"sam", "baseline"}
        assert entry["prompt"] == prompt_of(example)  # the page builds the very prompt the outcome was measured on


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_each_example_has_its_stated_outcome(service, example):
    answers = answer_example(service.pipeline, [Image.open(path) for path in example.images], prompt_of(example))
    measured = {mode: outcome(answers[mode], example.reference) for mode in ("sam", "baseline")}
    assert measured == example.outcome, (answers, example.reference, example.shows)


def test_no_shipped_example_is_flagged_out_of_domain(service):
    for example in EXAMPLES:
        report = check_domain(service, [Image.open(path).convert("RGB") for path in example.images])
        assert report is not None and report.out_of_domain == [], example.name


def test_example_folders_hold_nothing_else():
    for folder in Path(EXAMPLES_DIR).iterdir():
        assert (folder / "example.json").exists(), folder
