import json

import numpy as np
import pytest

from collections import Counter

from sam_core.data import (
    COLOURS, GRID, LOOKUP, NAME, PLACES, SHAPES, TRAINING_TASKS, AnnotationDataset, MiniLink, MiniLinkConfig, cell_labels,
    make_sample, minilink_vocabulary, names_linked_object, shared_attributes, write_split,
)
from sam_core.tiny import tiny_processor


def test_generation_is_deterministic_and_seeds_are_disjoint():
    first, again = make_sample(0, 7), make_sample(0, 7)
    assert first.instruction == again.instruction and first.output == again.output
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first.images, again.images))
    other = make_sample(1, 7)
    assert (other.linked, other.output) != (first.linked, first.output) or not np.array_equal(
        np.asarray(other.images[0]), np.asarray(first.images[0])
    )


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("index", range(40))
def test_samples_are_well_formed(index, version):
    config = MiniLinkConfig(min_images=2, max_images=6, alike=0.8, version=version)
    sample = make_sample(3, index, config)
    kinds = [{obj.name for obj in scene} for scene in sample.scenes]
    assert 2 <= len(sample.images) <= 6
    assert set.intersection(*kinds) == {sample.linked}  # the linked object is in every image, no distractor is
    for scene, image in zip(sample.scenes, sample.images):
        assert len({obj.cell for obj in scene}) == len(scene)  # one object per grid cell
        assert config.min_objects <= len(scene) <= config.max_objects
        pixels = np.asarray(image)
        for obj in scene:  # every object is drawn in its colour inside its box
            x0, y0, x1, y1 = obj.box
            patch = pixels[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3)
            assert (np.abs(patch.astype(int) - COLOURS[obj.colour]).sum(axis=1) == 0).any()
    assert names_linked_object(sample.output, sample.linked) or sample.task == "question"
    if sample.task == "group":
        assert sample.instruction.startswith("Sum up the common factor in these")
    if sample.task == "story":
        last = next(obj for obj in sample.scenes[-1] if obj.name == sample.linked)
        name = sample.instruction.split("Caption#1:")[1].split()[0]
        if version == 1:
            assert sample.output.endswith(f"is at the {last.place} .")
        else:  # version 2 names the character and the linked object only (one token per image cannot carry the place)
            assert sample.output == f"{name} the {sample.linked} ."
        assert sample.instruction.count("{image#") == len(sample.images)
        assert sample.instruction.endswith(f"Caption#{len(sample.images)}:")


@pytest.mark.parametrize("config", [MiniLinkConfig(min_images=2, max_images=6, decoys=True, version=1),
                                    MiniLinkConfig(min_images=2, max_images=6)], ids=["v1-decoys", "v2"])
@pytest.mark.parametrize("index", range(20))
def test_decoys_share_a_colour_and_a_shape_across_images_but_never_bound_together(index, config):
    sample = make_sample(5, index, config)
    colour, shape = sample.linked.split()
    kinds = [{(obj.colour, obj.shape) for obj in scene} for scene in sample.scenes]
    assert set.intersection(*kinds) == {(colour, shape)}
    shared_colours = set.intersection(*({c for c, _ in scene} for scene in kinds)) - {colour}
    shared_shapes = set.intersection(*({s for _, s in scene} for scene in kinds)) - {shape}
    assert shared_colours and shared_shapes  # the attributes all images share do not single out the linked object
    for decoy_colour in shared_colours:
        for decoy_shape in shared_shapes:
            assert not all((decoy_colour, decoy_shape) in scene for scene in kinds)
    assert all(config.min_objects <= len(scene) <= config.max_objects for scene in sample.scenes)


@pytest.mark.parametrize("seed", [2, 101])
def test_version_2_balances_every_attribute_count_in_every_image(seed):
    """The v2 property: in every image the linked colour is exactly as frequent as the decoy colour, and the linked
    shape as the decoy shape; the colours (shapes) all images share are exactly those two; the linked object is
    the only colour-shape pair of the four that ever appears, and it is in every image."""
    config = MiniLinkConfig(min_images=2, max_images=6, max_objects=7)
    for index in range(150):
        sample = make_sample(seed, index, config)
        colour, shape = sample.linked.split()
        colours, shapes = shared_attributes(sample.scenes)
        assert colour in colours and shape in shapes and len(colours) == len(shapes) == 2
        (decoy_colour,), (decoy_shape,) = colours - {colour}, shapes - {shape}
        for scene in sample.scenes:
            colour_counts, shape_counts = Counter(obj.colour for obj in scene), Counter(obj.shape for obj in scene)
            assert colour_counts[colour] == colour_counts[decoy_colour] >= 1
            assert shape_counts[shape] == shape_counts[decoy_shape] >= 1
            pairs = {(obj.colour, obj.shape) for obj in scene}
            assert (colour, shape) in pairs
            assert not pairs & {(decoy_colour, decoy_shape), (colour, decoy_shape), (decoy_colour, shape)}


def test_version_2_twins_alike_distractors():
    """With alike distractors, v2 adds them as twins (the linked and the decoy colour, or shape), so images hold
    more than one object of the linked colour while the counts stay equal."""
    config = MiniLinkConfig(min_objects=5, max_objects=5, alike=1.0, tasks=("group",))
    repeated = 0
    for index in range(30):
        sample = make_sample(2, index, config)
        colour, shape = sample.linked.split()
        repeated += sum(Counter(obj.colour for obj in scene)[colour] + Counter(obj.shape for obj in scene)[shape] == 3
                        for scene in sample.scenes)
    assert repeated > 30  # most 5-object images hold one twin pair (3 objects of the linked colour or shape, with L)


def test_version_knobs_are_checked():
    with pytest.raises(ValueError, match="at least 3 objects"):
        MiniLinkConfig(min_objects=1, max_objects=1, decoys=True, version=1)
    with pytest.raises(ValueError, match="at least 3 objects"):
        MiniLinkConfig(min_objects=1, max_objects=1)  # version 2 always has decoys
    with pytest.raises(ValueError, match="version-1 knob"):
        MiniLinkConfig(decoys=True)
    with pytest.raises(ValueError, match="1 or 2"):
        MiniLinkConfig(version=3)


def test_versions_and_decoys_keep_each_samples_task_images_and_linked_object():
    """The same split in every setting is the same questions made harder, so scores across settings compare."""
    for index in range(10):
        plain = make_sample(4, index, MiniLinkConfig(version=1))
        for harder in (MiniLinkConfig(decoys=True, version=1), MiniLinkConfig()):
            hard = make_sample(4, index, harder)
            assert (plain.task, len(plain.images), plain.linked) == (hard.task, len(hard.images), hard.linked)


@pytest.mark.parametrize("index", range(30))
def test_lookups_name_one_object_of_one_image_and_answer_about_it(index):
    config = MiniLinkConfig(tasks=(LOOKUP,))
    sample = make_sample(4, index, config)
    assert len(sample.images) == 1 == MiniLink(4, 30, config).num_images(index)
    (scene,) = sample.scenes
    target = next(obj for obj in scene if obj.name == sample.linked)
    answer = sample.output.removesuffix(" .")
    if sample.instruction.startswith("What colour"):  # named by its shape, which no other object has
        assert [obj.shape for obj in scene].count(target.shape) == 1 and answer == target.colour
    elif sample.instruction.startswith("Which shape"):
        assert [obj.colour for obj in scene].count(target.colour) == 1 and answer == target.shape
    else:
        assert sample.linked in sample.instruction and answer == target.place


def test_naming_samples_show_one_object_and_name_it():
    config = MiniLinkConfig(tasks=(NAME,))
    for index in range(10):
        sample = make_sample(4, index, config)
        assert len(sample.images) == 1 and len(sample.scenes[0]) == 1 == MiniLink(4, 10, config).num_images(index)
        assert sample.output == f"a {sample.scenes[0][0].name} ." and names_linked_object(sample.output, sample.linked)


def test_the_shape_set_is_a_knob_and_cells_are_labelled():
    config = MiniLinkConfig(shapes=("circle", "square", "cross", "star"))
    for index in range(20):
        sample = make_sample(0, index, config)
        assert {obj.shape for scene in sample.scenes for obj in scene} <= set(config.shapes)
    scene = make_sample(0, 1).scenes[0]
    colours, shapes = cell_labels(scene)
    assert sum(shape < len(SHAPES) for shape in shapes) == len(scene)
    for obj in scene:
        cell = obj.cell[0] * GRID + obj.cell[1]
        assert (list(COLOURS)[colours[cell]], SHAPES[shapes[cell]]) == (obj.colour, obj.shape)


def test_every_word_is_in_the_vocabulary():
    vocabulary = set(minilink_vocabulary())
    tokenizer = tiny_processor(minilink_vocabulary()).tokenizer
    for index in range(60):
        sample = make_sample(0, index, MiniLinkConfig(tasks=TRAINING_TASKS))
        assert tokenizer.unk_token_id not in tokenizer(sample.instruction + " " + sample.output).input_ids
    assert {w for row in PLACES for place in row for w in place.split()} <= vocabulary


def test_written_split_uses_the_authors_schema(tmp_path):
    path = write_split(tmp_path / "test", seed=2, size=5)
    records = json.loads(path.read_text())
    assert [set(r) >= {"id", "img_list", "instruction", "output"} for r in records] == [True] * 5
    dataset = AnnotationDataset(path)
    paths, instruction, output, record = dataset[0]
    assert all(p.exists() for p in paths) and dataset.num_images(0) == len(paths)
    assert instruction == MiniLink(2, 5)[0].instruction and output == record["output"] == MiniLink(2, 5)[0].output


def test_bad_annotation_files_are_clear_errors(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps([{"id": 1, "img_list": []}]))
    with pytest.raises(ValueError, match="lacks"):
        AnnotationDataset(bad)


def test_accuracy_needs_colour_and_shape_together():
    assert names_linked_object("Every picture shows a Red Star.", "red star")
    assert not names_linked_object("a red circle and a blue star", "red star")


def test_a_model_trained_from_scratch_gets_the_shipped_checkpoints_vocabulary():
    """Token ids come from the order of MiniLINK's words: rewording a prompt must not renumber them, or the recipe
    no longer reproduces the embedded model (its tokenizers ship with it)."""
    from sam_core.loading import EMBEDDED_DEFAULT

    built = tiny_processor(minilink_vocabulary())
    shipped = json.loads((EMBEDDED_DEFAULT / "tokenizer.json").read_text())["model"]["vocab"]
    shipped_qformer = json.loads((EMBEDDED_DEFAULT / "qformer_tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert built.tokenizer.get_vocab() == shipped and built.qformer_tokenizer.get_vocab() == shipped_qformer
