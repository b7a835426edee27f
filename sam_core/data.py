"""MiniLINK: a procedural stand-in for MmLINK (DESIGN.md §3), and datasets in the authors' annotation schema.

Every sample is a group of strongly different images (varied backgrounds, several coloured shapes each) that
share exactly one object, the *linked* object; all other objects are distractors, none of which is in every
image. Tasks follow the paper: group captioning (name the shared object) and storytelling (the character
named in the captions is the linked object; the missing last caption must say what it is). Everything is
deterministic from (seed, index).

Version 2 (the default) makes attribute frequency uninformative: every image holds, besides the linked object
(colour c1, shape s1), the decoy colour c2 on another shape and the decoy shape s2 in another colour, and any
distractor that shares one of these four attributes comes in a pair with its twin (c1 with c2, s1 with s2). So in
every image c1 is exactly as frequent as c2 and s1 as s2, the colours in every image are exactly {c1, c2} and the
shapes {s1, s2}: whoever sees only each image's bag of colours and bag of shapes cannot do better than one
chance in four. Only binding colour to shape, across the images, finds the linked object.
Version 1 (`version=1`) is the earlier benchmark, kept reproducible: optional decoys, distractors that share
only the linked object's attributes (so the linked ones are more frequent), and a storytelling answer that also
names the linked object's place in the last image.
"""

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .processing import GROUP_CAPTION, count_word, group_caption_prompt, load_image, storytelling_prompt

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 220, 30),
    "orange": (250, 140, 20),
    "purple": (140, 50, 190),
    "pink": (250, 130, 190),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "cyan": (40, 215, 225),
    "brown": (125, 75, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond", "cross", "ring", "moon", "hexagon")
GRID = 3  # objects sit in distinct cells of a 3×3 grid, so every object is visible and has a place name
PLACES = (("top left", "top", "top right"), ("left", "middle", "right"), ("bottom left", "bottom", "bottom right"))
NAMES = ("bobo", "lulu", "kiki", "momo", "pip", "zaza", "tito", "nina", "rex", "dodo")
VERBS = ("jumps", "sleeps", "dances", "waits", "runs", "sings", "hides", "smiles")
BACKGROUNDS = ("flat", "gradient", "stripes", "checker", "noise", "dots")
TASKS = ("group", "story", "question")
# Single-image lookups: a training-only task (InstructBLIP's single-image instruction data, in MiniLINK's world)
# that teaches the Q-Former to keep the one object an instruction names, within its tight token budget.
LOOKUP = "lookup"
# Naming the one object of a single image: a training-only task (InstructBLIP's captioning pretraining, in
# MiniLINK's world) that teaches the LLM to read an object off a visual token.
NAME = "name"
TRAINING_TASKS = TASKS + (LOOKUP, NAME)
COLOUR_QUESTION = "What colour is the shape that is in every picture?"
SHAPE_QUESTION = "Which shape is in every picture?"
LOOKUP_COLOUR = "What colour is the {shape} in the picture?"
LOOKUP_SHAPE = "Which shape in the picture is {colour}?"
LOOKUP_PLACE = "Where is the {colour} {shape} in the picture?"
NAME_QUESTION = "What is in the picture?"


def minilink_vocabulary() -> list[str]:
    """Every word MiniLINK prompts and answers use (for the word-level tokenizers)."""
    # The paper's template spelled with every count from one to ten, first: the words' order fixes the token ids of
    # every checkpoint trained from scratch, so it must not move when a prompt's wording changes.
    texts = [GROUP_CAPTION.format(count=count_word(n)) for n in range(1, 11)]
    texts += [storytelling_prompt([]), COLOUR_QUESTION, SHAPE_QUESTION]
    texts += [template.format(colour="", shape="") for template in (LOOKUP_COLOUR, LOOKUP_SHAPE, LOOKUP_PLACE, NAME_QUESTION)]
    texts += ["every picture shows a", "the", "is at the", "caption image # { } : . , ?", group_caption_prompt(1)]
    words = [w for text in texts for w in text.lower().replace("?", " ? ").replace(".", " . ").replace(",", " , ").split()]
    places = [w for row in PLACES for place in row for w in place.split()]
    return list(dict.fromkeys(words + list(COLOURS) + list(SHAPES) + places + list(NAMES) + list(VERBS) + [str(d) for d in range(10)]))


@dataclass(frozen=True)
class MiniLinkConfig:
    """Difficulty knobs. `alike` is the chance that a distractor shares an attribute of the linked object (version
    1) or, in version 2, that a free pair of places holds a twin pair of distractors sharing the linked and the decoy
    colour (or shape), which makes the images harder to tell apart by one attribute."""

    min_images: int = 3
    max_images: int = 5
    min_objects: int = 3
    max_objects: int = 5
    alike: float = 0.5
    # Version 1 only: every image also holds an object of one other colour and one of one other shape, never
    # together (version 2 always has them, balanced).
    decoys: bool = False
    image_size: int = 64
    tasks: tuple[str, ...] = TASKS
    shapes: tuple[str, ...] = SHAPES  # fewer, more distinct shapes make perception easier
    version: int = 2  # 2: balanced decoys, storytelling without the place; 1: the earlier benchmark

    def __post_init__(self):
        if self.version not in (1, 2):
            raise ValueError(f"MiniLINK version must be 1 or 2, got {self.version}")
        if self.version == 2 and self.decoys:
            raise ValueError("decoys are a version-1 knob: version 2 always holds balanced decoys")
        if self.has_decoys and self.min_objects < 3:
            raise ValueError("decoys need at least 3 objects per image: the linked object and the two decoys")
        if self.version == 2 and len(self.shapes) < 4:
            raise ValueError("version 2 needs at least 4 shapes: the linked, the decoy and others for the decoys")

    @property
    def has_decoys(self) -> bool:
        return self.version == 2 or self.decoys


@dataclass
class SceneObject:
    colour: str
    shape: str
    cell: tuple[int, int]  # (row, column) in the grid
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def place(self) -> str:
        return PLACES[self.cell[0]][self.cell[1]]


@dataclass
class MiniLinkSample:
    id: str
    task: str
    images: list[Image.Image]
    instruction: str
    output: str
    linked: str  # "colour shape"
    scenes: list[list[SceneObject]] = field(repr=False)

    def to_annotation(self, image_names: list[str]) -> dict:
        """The authors' schema plus the fields task accuracy needs."""
        return {
            "id": self.id,
            "img_list": image_names,
            "instruction": self.instruction,
            "output": self.output,
            "task": self.task,
            "linked": self.linked,
        }


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2

    def polygon(points):
        draw.polygon([(cx + r * px, cy + r * py) for px, py in points], fill=colour)

    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle([x0 + r * 0.15, y0 + r * 0.15, x1 - r * 0.15, y1 - r * 0.15], fill=colour)
    elif shape == "triangle":
        polygon([(0, -1), (1, 0.85), (-1, 0.85)])
    elif shape == "star":
        polygon([(math.cos(a) * rad, math.sin(a) * rad) for k in range(10) for a, rad in [(-math.pi / 2 + k * math.pi / 5, 1 if k % 2 == 0 else 0.45)]])
    elif shape == "heart":
        draw.ellipse([cx - r, cy - r * 0.8, cx, cy + r * 0.1], fill=colour)
        draw.ellipse([cx, cy - r * 0.8, cx + r, cy + r * 0.1], fill=colour)
        polygon([(-0.97, -0.2), (0.97, -0.2), (0, 1)])
    elif shape == "diamond":
        polygon([(0, -1), (0.7, 0), (0, 1), (-0.7, 0)])
    elif shape == "cross":
        polygon([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)])
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.45)))
    elif shape == "moon":
        outer = [(math.cos(a), math.sin(a)) for a in [math.pi / 2 + k * math.pi / 12 for k in range(13)]]
        inner = [(0.45 * math.cos(a) - 0.1, math.sin(a)) for a in [3 * math.pi / 2 - k * math.pi / 12 for k in range(13)]]
        polygon(outer + inner)
    elif shape == "hexagon":
        polygon([(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)])
    else:
        raise ValueError(f"unknown shape {shape!r}")


def muted_colour(rng: random.Random) -> tuple[int, int, int]:
    """Mid-tone, low-saturation background colours, so black, white and every object colour stay visible."""
    base = rng.randint(70, 175)
    return tuple(max(0, min(255, base + rng.randint(-35, 35))) for _ in range(3))


def render_background(rng: random.Random, size: int) -> Image.Image:
    kind = rng.choice(BACKGROUNDS)
    first, second = muted_colour(rng), muted_colour(rng)
    image = Image.new("RGB", (size, size), first)
    draw = ImageDraw.Draw(image)
    if kind == "gradient":
        vertical = rng.random() < 0.5
        for t in range(size):
            mix = tuple(int(a + (b - a) * t / (size - 1)) for a, b in zip(first, second))
            draw.line([(0, t), (size - 1, t)] if vertical else [(t, 0), (t, size - 1)], fill=mix)
    elif kind == "stripes":
        width = rng.randint(3, 8)
        for start in range(-size, size, 2 * width):
            draw.polygon([(start, 0), (start + width, 0), (start + width + size, size), (start + size, size)], fill=second)
    elif kind == "checker":
        cell = rng.randint(4, 10)
        for row in range(0, size, cell):
            for column in range(0, size, cell):
                if (row // cell + column // cell) % 2:
                    draw.rectangle([column, row, column + cell - 1, row + cell - 1], fill=second)
    elif kind == "noise":
        noise = np.random.default_rng(rng.getrandbits(32)).integers(-30, 31, (size, size, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    elif kind == "dots":
        for _ in range(size // 3):
            x, y, rad = rng.randrange(size), rng.randrange(size), rng.randint(1, 3)
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=second)
    return image


def place_objects(rng: random.Random, kinds: list[tuple[str, str]], size: int) -> list[SceneObject]:
    cells = rng.sample([(row, column) for row in range(GRID) for column in range(GRID)], len(kinds))
    cell_size = size / GRID
    objects = []
    for (colour, shape), (row, column) in zip(kinds, cells):
        extent = rng.uniform(0.6, 0.9) * cell_size
        x0 = column * cell_size + rng.uniform(0, cell_size - extent)
        y0 = row * cell_size + rng.uniform(0, cell_size - extent)
        objects.append(SceneObject(colour, shape, (row, column), (round(x0), round(y0), round(x0 + extent), round(y0 + extent))))
    return objects


def render_scene(rng: random.Random, objects: list[SceneObject], size: int) -> Image.Image:
    image = render_background(rng, size)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_shape(draw, obj.shape, obj.box, COLOURS[obj.colour])
    return image


def pick_distractor(rng: random.Random, linked: tuple[str, str], config: MiniLinkConfig, taken: set) -> tuple[str, str]:
    colour, shape = linked
    while True:
        if rng.random() < config.alike:
            kind = (colour, rng.choice(config.shapes)) if rng.random() < 0.5 else (rng.choice(list(COLOURS)), shape)
        else:
            kind = (rng.choice(list(COLOURS)), rng.choice(config.shapes))
        if kind != linked and kind not in taken:
            return kind


def pick_decoy(rng: random.Random, linked: tuple[str, str], config: MiniLinkConfig) -> tuple[str, str]:
    """A decoy colour and a decoy shape for a group, both unlike the linked object's."""
    colour, shape = linked
    return rng.choice([c for c in COLOURS if c != colour]), rng.choice([s for s in config.shapes if s != shape])


def decoy_kinds(rng: random.Random, linked: tuple[str, str], decoy: tuple[str, str], config: MiniLinkConfig) -> set:
    """One image's two decoys: the decoy colour on another shape, the decoy shape in another colour."""
    others = [s for s in config.shapes if s not in (linked[1], decoy[1])]
    other_colours = [c for c in COLOURS if c not in (linked[0], decoy[0])]
    return {(decoy[0], rng.choice(others)), (rng.choice(other_colours), decoy[1])}


def balanced_kinds(rng: random.Random, linked: tuple[str, str], decoy: tuple[str, str], count: int,
                   config: MiniLinkConfig) -> set:
    """One version-2 image: the linked object (c1, s1), the decoy colour c2 on another shape, the decoy shape s2 in
    another colour, twin pairs of alike distractors ((c1, x) with (c2, y), or (x, s1) with (y, s2)) and neutral
    distractors that share none of the four attributes. c1 and c2 (s1 and s2) are then equally frequent."""
    (colour, shape), (decoy_colour, decoy_shape) = linked, decoy
    other_colours = [c for c in COLOURS if c not in (colour, decoy_colour)]
    other_shapes = [s for s in config.shapes if s not in (shape, decoy_shape)]
    kinds = {linked, (decoy_colour, rng.choice(other_shapes)), (rng.choice(other_colours), decoy_shape)}
    for _ in range((count - len(kinds)) // 2):
        if rng.random() < config.alike:
            while True:
                if rng.random() < 0.5:
                    twins = {(colour, rng.choice(other_shapes)), (decoy_colour, rng.choice(other_shapes))}
                else:
                    twins = {(rng.choice(other_colours), shape), (rng.choice(other_colours), decoy_shape)}
                if len(twins) == 2 and not twins & kinds:
                    kinds |= twins
                    break
    while len(kinds) < count:
        kinds.add((rng.choice(other_colours), rng.choice(other_shapes)))
    return kinds


def shared_attributes(scenes: list[list["SceneObject"]]) -> tuple[set[str], set[str]]:
    """The colours and the shapes that every image of a group holds."""
    colours = set.intersection(*({obj.colour for obj in scene} for scene in scenes))
    shapes = set.intersection(*({obj.shape for obj in scene} for scene in scenes))
    return colours, shapes


def cell_labels(objects: list[SceneObject]) -> tuple[list[int], list[int]]:
    """Per grid cell (row-major), the index of its object's colour and shape in COLOURS / SHAPES, or
    len(COLOURS) / len(SHAPES) for an empty cell: the targets of the vision encoder's pretraining."""
    colours, shapes = [len(COLOURS)] * GRID * GRID, [len(SHAPES)] * GRID * GRID
    for obj in objects:
        cell = obj.cell[0] * GRID + obj.cell[1]
        colours[cell], shapes[cell] = list(COLOURS).index(obj.colour), SHAPES.index(obj.shape)
    return colours, shapes


def sample_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"minilink-{seed}-{index}")


def num_images_of(seed: int, index: int, config: MiniLinkConfig) -> int:
    """N of a sample without rendering it (the first two draws of its generator), for batching by N."""
    rng = sample_rng(seed, index)
    num_images = rng.randint(config.min_images, config.max_images)
    return 1 if rng.choice(config.tasks) in (LOOKUP, NAME) else num_images


def make_lookup(rng: random.Random, sample_id: str, config: MiniLinkConfig) -> MiniLinkSample:
    """One image and a question that names one of its objects by a unique attribute; the answer is another
    attribute of that object (its colour, its shape or its place)."""
    count = rng.randint(config.min_objects, config.max_objects)
    kinds: set[tuple[str, str]] = set()
    while len(kinds) < count:
        kinds.add((rng.choice(list(COLOURS)), rng.choice(config.shapes)))
    kinds = sorted(kinds)
    rng.shuffle(kinds)
    objects = place_objects(rng, kinds, config.image_size)
    image = render_scene(rng, objects, config.image_size)
    target = rng.choice(objects)
    unique_shape = sum(obj.shape == target.shape for obj in objects) == 1
    unique_colour = sum(obj.colour == target.colour for obj in objects) == 1
    asks = ["place"] + ["colour"] * unique_shape + ["shape"] * unique_colour
    ask = rng.choice(asks)
    if ask == "colour":
        instruction, output = LOOKUP_COLOUR.format(shape=target.shape), f"{target.colour} ."
    elif ask == "shape":
        instruction, output = LOOKUP_SHAPE.format(colour=target.colour), f"{target.shape} ."
    else:
        instruction, output = LOOKUP_PLACE.format(colour=target.colour, shape=target.shape), f"{target.place} ."
    return MiniLinkSample(sample_id, LOOKUP, [image], instruction, output, target.name, [objects])


def make_naming(rng: random.Random, sample_id: str, config: MiniLinkConfig) -> MiniLinkSample:
    """One image with one object on a MiniLINK background; the answer names it."""
    kind = (rng.choice(list(COLOURS)), rng.choice(config.shapes))
    objects = place_objects(rng, [kind], config.image_size)
    image = render_scene(rng, objects, config.image_size)
    return MiniLinkSample(sample_id, NAME, [image], NAME_QUESTION, f"a {kind[0]} {kind[1]} .", objects[0].name, [objects])


def make_sample(seed: int, index: int, config: MiniLinkConfig = MiniLinkConfig()) -> MiniLinkSample:
    rng = sample_rng(seed, index)
    num_images = rng.randint(config.min_images, config.max_images)
    task = rng.choice(config.tasks)
    if task == LOOKUP:
        return make_lookup(rng, f"{seed}-{index}", config)
    if task == NAME:
        return make_naming(rng, f"{seed}-{index}", config)
    linked = (rng.choice(list(COLOURS)), rng.choice(config.shapes))
    scenes = []
    decoy = pick_decoy(rng, linked, config) if config.has_decoys else None
    while True:
        kinds_per_image = []
        for _ in range(num_images):
            count = rng.randint(config.min_objects, config.max_objects)
            if config.version == 2:
                kinds = balanced_kinds(rng, linked, decoy, count, config)
            else:
                kinds = {linked} | (decoy_kinds(rng, linked, decoy, config) if decoy else set())
                while len(kinds) < count:
                    kinds.add(pick_distractor(rng, linked, config, kinds))
            kinds_per_image.append(sorted(kinds))
        if set.intersection(*(set(k) for k in kinds_per_image)) != {linked}:
            continue  # a distractor is in every image
        if config.version == 2 and (set.intersection(*({c for c, _ in k} for k in kinds_per_image)) != {linked[0], decoy[0]}
                                    or set.intersection(*({s for _, s in k} for k in kinds_per_image)) != {linked[1], decoy[1]}):
            continue  # a third colour or shape is in every image
        break
    for kinds in kinds_per_image:
        rng.shuffle(kinds)
        scenes.append(place_objects(rng, kinds, config.image_size))
    images = [render_scene(rng, objects, config.image_size) for objects in scenes]
    linked_name = f"{linked[0]} {linked[1]}"
    if task == "group":
        instruction, output = group_caption_prompt(num_images), f"every picture shows a {linked_name} ."
    elif task == "story":
        name = rng.choice(NAMES)
        captions = [f"{name} {rng.choice(VERBS)} ." for _ in range(num_images - 1)]
        output = f"{name} the {linked_name} ."
        if config.version == 1:  # the place in the last image: one token per image cannot carry it (see the card)
            last_place = next(obj.place for obj in scenes[-1] if (obj.colour, obj.shape) == linked)
            output = f"{name} the {linked_name} is at the {last_place} ."
        instruction = storytelling_prompt(captions)
    else:
        if rng.random() < 0.5:
            instruction, output = COLOUR_QUESTION, f"{linked[0]} ."
        else:
            instruction, output = SHAPE_QUESTION, f"{linked[1]} ."
    return MiniLinkSample(f"{seed}-{index}", task, images, instruction, output, linked_name, scenes)


class MiniLink:
    """A split of `size` samples generated on demand from `seed` (train/dev/test use disjoint seeds)."""

    def __init__(self, seed: int, size: int, config: MiniLinkConfig = MiniLinkConfig()):
        self.seed, self.size, self.config = seed, size, config

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> MiniLinkSample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return make_sample(self.seed, index, self.config)

    def num_images(self, index: int) -> int:
        return num_images_of(self.seed, index, self.config)


SPLIT_SEEDS = {"train": 0, "dev": 1, "test": 2}


def write_split(directory: str | Path, seed: int, size: int, config: MiniLinkConfig = MiniLinkConfig()) -> Path:
    """Write images and `annotations.json` (authors' schema) for a split; returns the annotations path."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    annotations = []
    for index in range(size):
        sample = make_sample(seed, index, config)
        names = []
        for k, image in enumerate(sample.images):
            name = f"images/{sample.id}_{k}.png"
            image.save(directory / name)
            names.append(name)
        annotations.append(sample.to_annotation(names))
    path = directory / "annotations.json"
    path.write_text(json.dumps(annotations, indent=1))
    return path


class AnnotationDataset:
    """A dataset in the authors' schema: a JSON list of {id, img_list, instruction, output} with image paths
    relative to the JSON file's folder (or absolute). Items are (image paths, instruction, output, record)."""

    def __init__(self, annotations: str | Path):
        self.path = Path(annotations)
        self.root = self.path.parent
        records = json.loads(self.path.read_text())
        if not isinstance(records, list):
            raise ValueError(f"{self.path.name}: expected a JSON list of samples")
        for record in records:
            missing = {"id", "img_list", "instruction", "output"} - set(record)
            if missing:
                raise ValueError(f"{self.path.name}: sample {record.get('id', '?')} lacks {sorted(missing)}")
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        return [self.root / name for name in record["img_list"]], record["instruction"], record["output"], record

    def num_images(self, index: int) -> int:
        return len(self.records[index]["img_list"])


def read_items(dataset, indices) -> tuple[list, list[str], list[str], list[dict]]:
    """(image sets, prompts, reference answers, records) for some samples of a MiniLink split or of an
    AnnotationDataset; records carry the id and, where known, the task and the linked object."""
    image_sets, prompts, answers, records = [], [], [], []
    for index in indices:
        item = dataset[index]
        if isinstance(item, tuple):
            paths, prompt, answer, record = item
            image_sets.append([load_image(path) for path in paths])
        else:
            image_sets.append(item.images)
            prompt, answer = item.instruction, item.output
            record = {"id": item.id, "task": item.task, "linked": item.linked}
        prompts.append(prompt)
        answers.append(answer)
        records.append(record)
    return image_sets, prompts, answers, records


def names_linked_object(answer: str, linked: str) -> bool:
    """Task accuracy: the answer names the linked object (its colour and its shape, together)."""
    return linked in " ".join(answer.lower().replace(".", " ").replace(",", " ").split())


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write MiniLINK splits in the authors' annotation schema.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test"], choices=sorted(SPLIT_SEEDS))
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--min-images", type=int, default=MiniLinkConfig.min_images)
    parser.add_argument("--max-images", type=int, default=MiniLinkConfig.max_images)
    parser.add_argument("--min-objects", type=int, default=MiniLinkConfig.min_objects)
    parser.add_argument("--max-objects", type=int, default=MiniLinkConfig.max_objects)
    parser.add_argument("--alike", type=float, default=MiniLinkConfig.alike)
    parser.add_argument("--version", type=int, default=MiniLinkConfig.version, choices=(1, 2),
                        help="2: balanced decoys (attribute counts say nothing); 1: the earlier benchmark")
    parser.add_argument("--decoys", action="store_true", help="version 1: a decoy colour and a decoy shape in every image")
    args = parser.parse_args(argv)
    config = MiniLinkConfig(args.min_images, args.max_images, args.min_objects, args.max_objects, args.alike,
                            args.decoys, version=args.version)
    for split in args.splits:
        print(write_split(Path(args.out) / split, SPLIT_SEEDS[split], args.size, config))


if __name__ == "__main__":
    main()
