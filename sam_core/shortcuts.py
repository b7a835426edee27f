"""Shortcuts on MiniLINK: how far a rule gets that never binds a colour to a shape.

A no-binding rule sees what a model without binding could keep of a group: every image's bag of colours and bag
of shapes (how many objects of each); never which colour goes with which shape. Two more rules also see where
each colour and each shape sits and how large its objects are: they bind by place (see `shortcut_rules`). It names the colour and the shape it picks in the task's answer template,
so it is scored like a model. A rule that cannot tell some candidates apart picks among them at random; its
scores are the expectation over that draw (exact, no sampling noise). Chance is the rule that picks any colour
and any shape that every image holds. On MiniLINK version 2 every bag rule is at chance by construction (the
linked and the decoy colour, and the linked and the decoy shape, are equally frequent in every image); on
version 1 the linked attributes are the frequent ones, which the counting rule exploits.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from .data import GRID, SPLIT_SEEDS, MiniLink, MiniLinkSample, shared_attributes


@dataclass
class Candidates:
    """A rule's picks for one sample: equally likely colours and shapes (the product is its answer set)."""

    colours: list[str]
    shapes: list[str]


def bag_features(sample: MiniLinkSample, attribute: str, value: str) -> list[float]:
    """What the images' bags say about one colour (or shape): its count over the group, its smallest and largest
    count in one image, in how many images it appears more than once, its count in the first and the last image."""
    counts = [sum(getattr(obj, attribute) == value for obj in scene) for scene in sample.scenes]
    return [sum(counts), min(counts), max(counts), sum(c > 1 for c in counts), counts[0], counts[-1]]


def position_features(sample: MiniLinkSample, attribute: str, value: str) -> list[float]:
    """Where the objects of one colour (or shape) sit and how large they are: mean distance of their cells from
    the centre, mean row, mean column, mean box width, and how many distinct cells they occupy."""
    objects = [obj for scene in sample.scenes for obj in scene if getattr(obj, attribute) == value]
    centre = (GRID - 1) / 2
    return [
        float(np.mean([abs(obj.cell[0] - centre) + abs(obj.cell[1] - centre) for obj in objects])),
        float(np.mean([obj.cell[0] for obj in objects])),
        float(np.mean([obj.cell[1] for obj in objects])),
        float(np.mean([obj.box[2] - obj.box[0] for obj in objects])),
        float(len({obj.cell for obj in objects})),
    ]


def best(values: dict[str, float], largest: bool = True) -> list[str]:
    """The keys tied at the best value (exact ties only: they are the cases a rule cannot tell apart)."""
    target = max(values.values()) if largest else min(values.values())
    return sorted(k for k, v in values.items() if np.isclose(v, target))


def scored_rule(score: Callable[[MiniLinkSample, str, str], float], largest: bool = True):
    """A rule that scores every shared colour and every shared shape on its own and picks the best of each."""

    def rule(sample: MiniLinkSample) -> Candidates:
        colours, shapes = shared_attributes(sample.scenes)
        return Candidates(best({c: score(sample, "colour", c) for c in colours}, largest),
                          best({s: score(sample, "shape", s) for s in shapes}, largest))

    return rule


def chance(sample: MiniLinkSample) -> Candidates:
    colours, shapes = shared_attributes(sample.scenes)
    return Candidates(sorted(colours), sorted(shapes))


def majority_per_image(sample: MiniLinkSample, attribute: str, value: str) -> float:
    """Votes from the images: each image votes for its most frequent shared colour (shape), ties split the vote."""
    colours, shapes = shared_attributes(sample.scenes)
    shared = colours if attribute == "colour" else shapes
    votes = 0.0
    for scene in sample.scenes:
        counts = Counter(getattr(obj, attribute) for obj in scene if getattr(obj, attribute) in shared)
        winners = best(dict(counts))
        votes += (value in winners) / len(winners)
    return votes


class LearnedBagRule:
    """The strongest bag rule we can fit: a logistic regression over `features` of each shared colour (shape),
    trained on the train split (seed 0) in the evaluated setting to tell the linked attribute from the others."""

    def __init__(self, features: Callable[[MiniLinkSample, str, str], list[float]], config, size: int, steps: int = 500):
        self.features = features
        train = MiniLink(SPLIT_SEEDS["train"], size, replace(config, tasks=("group",)))
        rows, labels = [], []
        for index in range(size):
            sample = train[index]
            colours, shapes = shared_attributes(sample.scenes)
            linked_colour, linked_shape = sample.linked.split()
            for attribute, values, linked in (("colour", colours, linked_colour), ("shape", shapes, linked_shape)):
                for value in values:
                    rows.append(features(sample, attribute, value))
                    labels.append(float(value == linked))
        x, y = np.asarray(rows), np.asarray(labels)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-9
        x = (x - self.mean) / self.scale
        self.weights, self.bias = np.zeros(x.shape[1]), 0.0
        for _ in range(steps):  # full-batch gradient descent on the logistic loss
            error = 1 / (1 + np.exp(-(x @ self.weights + self.bias))) - y
            self.weights -= 0.5 * x.T @ error / len(y)
            self.bias -= 0.5 * error.mean()

    def score(self, sample: MiniLinkSample, attribute: str, value: str) -> float:
        x = (np.asarray(self.features(sample, attribute, value)) - self.mean) / self.scale
        return float(x @ self.weights)


NO_BINDING, BY_PLACE = "no binding", "binds by place"


@lru_cache(maxsize=8)
def shortcut_rules(config, train_size: int = 400) -> dict[str, Callable[[MiniLinkSample], Candidates]]:
    """Every shortcut rule, by name; the learned ones are fitted on the train split in `config`'s setting.

    The no-binding rules see only the bags. The rules that also see where each colour and each shape sits (and how
    large its objects are) can pair a colour with a shape that shares its cell, which is binding within an image by
    place: they are shown for reference, not as no-binding rules (their colour pick alone, the colour questions, is
    at chance)."""
    return {
        f"{NO_BINDING}: chance (any shared colour and shape)": chance,
        f"{NO_BINDING}: most frequent (counting)": scored_rule(lambda s, a, v: bag_features(s, a, v)[0]),
        f"{NO_BINDING}: least frequent": scored_rule(lambda s, a, v: bag_features(s, a, v)[0], largest=False),
        f"{NO_BINDING}: majority in each image": scored_rule(majority_per_image),
        f"{NO_BINDING}: learned from bags": scored_rule(LearnedBagRule(bag_features, config, train_size).score),
        f"{BY_PLACE}: most central": scored_rule(lambda s, a, v: position_features(s, a, v)[0], largest=False),
        f"{BY_PLACE}: learned from bags, places and sizes": scored_rule(
            LearnedBagRule(lambda s, a, v: bag_features(s, a, v) + position_features(s, a, v), config, train_size).score),
    }


def character_name(sample: MiniLinkSample) -> str:
    """The storytelling character, as its captions name it (the first word of the first caption)."""
    return sample.instruction.split("Caption#1:", 1)[1].split()[0]


def answers(sample: MiniLinkSample, candidates: Candidates) -> list[str]:
    """The rule's equally likely answers in the task's template."""
    if sample.task == "question":
        if sample.instruction.startswith("What colour"):
            return [f"{colour} ." for colour in candidates.colours]
        return [f"{shape} ." for shape in candidates.shapes]
    texts = []
    for colour in candidates.colours:
        for shape in candidates.shapes:
            if sample.task == "group":
                texts.append(f"every picture shows a {colour} {shape} .")
            elif " is at the " in sample.output:  # version 1 storytelling also names the place in the last image
                place = next((obj.place for obj in sample.scenes[-1] if (obj.colour, obj.shape) == (colour, shape)), "middle")
                texts.append(f"{character_name(sample)} the {colour} {shape} is at the {place} .")
            else:
                texts.append(f"{character_name(sample)} the {colour} {shape} .")
    return texts
