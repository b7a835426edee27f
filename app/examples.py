"""The app's examples: MiniLINK sets chosen by measurement on the loaded checkpoint, each with its reference
answer and a line saying what it shows, which a test re-checks.

    python -m app.examples            # re-select them on the current embedded model and rewrite examples/

Each slot asks for an outcome (SAM right or wrong, the baseline right or wrong: the greedy answer equals the
reference after the authors' normalisation) in a MiniLINK setting; the first dev-split sample that has it is
written to examples/<slot>/ (images, example.json with the reference, the outcome and the line the page shows).
Re-run it whenever the embedded checkpoint changes; `tests/test_examples.py` fails until you do.
"""

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from sam_core.data import SPLIT_SEEDS, MiniLink, MiniLinkConfig, MiniLinkSample
from sam_core.generation import SamPipeline
from sam_core.loading import load_sam
from sam_core.metrics import normalize_answer

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
TASK_NAMES = {"group": "Group captioning", "story": "Storytelling", "question": "Free question"}
MAX_NEW_TOKENS = 32  # the examples' decoding: greedy, seed 0, at most this many new tokens


@dataclass(frozen=True)
class Slot:
    """What one example must show: a MiniLINK setting and the outcome per mode ("right" / "wrong")."""

    name: str
    task: str
    sam: str
    baseline: str
    num_images: int = 4


SLOTS = (
    Slot("group-sam-binds", "group", sam="right", baseline="wrong"),
    Slot("story-sam-binds", "story", sam="right", baseline="wrong"),
    Slot("group-both-right", "group", sam="right", baseline="right", num_images=3),
    Slot("group-both-wrong", "group", sam="wrong", baseline="wrong"),
    Slot("question-both-right", "question", sam="right", baseline="right"),
)


@dataclass
class Example:
    """One example set as the page shows it (paths absolute)."""

    name: str
    images: list[str]
    task: str
    question: str
    captions: list[str]
    reference: str
    shows: str
    outcome: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.task}: {self.shows}"


def load_examples(directory: Path = EXAMPLES_DIR) -> list[Example]:
    """Every examples/*/example.json, in slot order (then by name)."""
    order = {slot.name: index for index, slot in enumerate(SLOTS)}
    examples = []
    for path in sorted(directory.glob("*/example.json"), key=lambda p: (order.get(p.parent.name, len(order)), p.parent.name)):
        for entry in json.loads(path.read_text()):
            examples.append(Example(
                entry["name"], [str(path.parent / name) for name in entry["images"]], entry["task"], entry.get("question", ""),
                entry.get("captions", []), entry["reference"], entry["shows"], entry["outcome"],
            ))
    return examples


def outcome(answer: str, reference: str) -> str:
    return "right" if normalize_answer(answer) == normalize_answer(reference) else "wrong"


def answer_example(pipeline: SamPipeline, images, prompt: str) -> dict[str, str]:
    """The examples' decoding: greedy, seed 0, at most MAX_NEW_TOKENS."""
    result = pipeline.generate(images, prompt, mode="compare", preset="greedy", seed=0, max_new_tokens=MAX_NEW_TOKENS)
    return {mode: answer.text for mode, answer in result.answers.items()}


def shows_line(slot: Slot, sample: MiniLinkSample, answers: dict[str, str]) -> str:
    """One sentence that says what the example shows, from what was measured on it."""
    sam, baseline = outcome(answers["sam"], sample.output), outcome(answers["baseline"], sample.output)
    if (sam, baseline) == ("right", "wrong"):
        named = answers["baseline"].lower()
        colours = {obj.colour for scene in sample.scenes for obj in scene}
        shapes = {obj.shape for scene in sample.scenes for obj in scene}
        pair = [word for word in named.replace(".", " ").split() if word in colours | shapes]
        in_every = all(any(word in (obj.colour, obj.shape) for obj in scene) for scene in sample.scenes for word in pair)
        mixes = len(pair) >= 2 and in_every and " ".join(pair[:2]) != sample.linked
        what = "the baseline pairs a colour and a shape that every picture has, but never together" if mixes else "the baseline does not"
        return f"SAM names the shared object ({sample.linked}); {what}."
    if (sam, baseline) == ("right", "right"):
        return "Both right: guidance is not needed here."
    if (sam, baseline) == ("wrong", "wrong"):
        return f"Both wrong: neither names the shared {sample.linked}; guidance does not always find it."
    return "The baseline is right and SAM is not: guidance can also mislead."


def select(pipeline: SamPipeline, slot: Slot, taken: set[str], limit: int = 400) -> tuple[MiniLinkSample, dict[str, str]]:
    """The first dev-split sample in the slot's setting whose greedy answers have the slot's outcome, skipping
    linked objects earlier slots took (so that no two examples are about the same object)."""
    config = MiniLinkConfig(min_images=slot.num_images, max_images=slot.num_images, tasks=(slot.task,))
    dataset = MiniLink(SPLIT_SEEDS["dev"], limit, config)
    for index in range(limit):
        sample = dataset[index]
        if sample.linked in taken:
            continue
        answers = answer_example(pipeline, sample.images, sample.instruction)
        if (outcome(answers["sam"], sample.output), outcome(answers["baseline"], sample.output)) == (slot.sam, slot.baseline):
            taken.add(sample.linked)
            return sample, answers
    raise LookupError(f"no dev-split sample among the first {limit} has the outcome of {slot}")


def write_example(slot: Slot, sample: MiniLinkSample, answers: dict[str, str], directory: Path) -> None:
    folder = directory / slot.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    names = []
    for index, image in enumerate(sample.images, start=1):
        image.save(folder / f"{index}.png")
        names.append(f"{index}.png")
    captions = []
    if slot.task == "story":  # the captions as the storytelling prompt holds them
        captions = [part.split(":", 1)[1] for part in sample.instruction.split("{image#")[1:-1]]
    entry = {
        "name": slot.name,
        "images": names,
        "task": TASK_NAMES[slot.task],
        "question": sample.instruction if slot.task == "question" else "",
        "captions": captions,
        "prompt": sample.instruction,
        "reference": sample.output,
        "shows": shows_line(slot, sample, answers),
        "outcome": {"sam": slot.sam, "baseline": slot.baseline},
        "answers": answers,
        "selected": f"dev split, sample {sample.id}, MiniLINK version {MiniLinkConfig.version}; greedy, seed 0, at most {MAX_NEW_TOKENS} new tokens",
    }
    (folder / "example.json").write_text(json.dumps([entry], indent=2, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Re-select the app's examples by measurement on a checkpoint")
    parser.add_argument("--model", default=None, help="default: the embedded checkpoint")
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    args = parser.parse_args(argv)
    pipeline = SamPipeline(load_sam(args.model))
    for stale in args.out.glob("*/example.json"):  # examples of earlier selections go
        if stale.parent.name not in {slot.name for slot in SLOTS}:
            shutil.rmtree(stale.parent)
    taken = set()
    for slot in SLOTS:
        sample, answers = select(pipeline, slot, taken)
        write_example(slot, sample, answers, args.out)
        print(f"{slot.name}: dev sample {sample.id} — SAM: {answers['sam']!r} · baseline: {answers['baseline']!r} · "
              f"reference: {sample.output!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
