import json

import numpy as np
import pytest

from sam_core.data import (
    COLOURS, PLACES, AnnotationDataset, MiniLink, MiniLinkConfig, make_sample, minilink_vocabulary,
    names_linked_object, write_split,
)


def test_generation_is_deterministic_and_seeds_are_disjoint():
    first, again = make_sample(0, 7), make_sample(0, 7)
    assert first.instruction == again.instruction and first.output == again.output
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first.images, again.images))
    other = make_sample(1, 7)
    assert (other.linked, other.output) != (first.linked, first.output) or not np.array_equal(
        np.asarray(other.images[0]), np.asarray(first.images[0])
    )


@pytest.mark.parametrize("index", range(40))
def test_samples_are_well_formed(index):
    config = MiniLinkConfig(min_images=2, max_images=6, alike=0.8)
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
        assert sample.output.endswith(f"is at the {last.place} .")
        assert sample.instruction.count("{image#") == len(sample.images)
        assert sample.instruction.endswith(f"Caption#{len(sample.images)}:")


def test_every_word_is_in_the_vocabulary():
    vocabulary = set(minilink_vocabulary())
    for index in range(60):
        sample = make_sample(0, index)
        words = sample.output.replace(".", " . ").split()
        assert set(words) <= vocabulary
    assert {w for row in PLACES for place in row for w in place.split()} <= vocabulary


def test_written_split_uses_the_authors_schema(tmp_path):
    path = write_split(tmp_path / "test", seed=2, size=5)
    records = json.loads(path.read_text())
    assert [set(r) >= {"id", "img_list", "instruction", "output"} for r in records] == [True] * 5
    dataset = AnnotationDataset(path)
    paths, instruction, output, record = dataset[0]
    assert all(p.exists() for p in paths) and dataset.num_images(0) == len(paths)
    assert instruction == MiniLink(2, 5)[0].instruction and output == record["output"]


def test_bad_annotation_files_are_clear_errors(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps([{"id": 1, "img_list": []}]))
    with pytest.raises(ValueError, match="lacks"):
        AnnotationDataset(bad)


def test_accuracy_needs_colour_and_shape_together():
    assert names_linked_object("Every picture shows a Red Star.", "red star")
    assert not names_linked_object("a red circle and a blue star", "red star")
