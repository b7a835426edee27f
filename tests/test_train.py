import json

import pytest
import torch
from PIL import Image

from sam_core.data import COLOURS, SHAPES, write_split
from sam_core.generation import SamPipeline
from sam_core.loading import load_sam
from sam_core.train import MiniLinkModelSize, TrainConfig, train

MICRO = MiniLinkModelSize(num_query_tokens=1, image_size=32, vision_width=32, vision_layers=1, qformer_width=32,
                          qformer_layers=2, llm_width=32, llm_layers=1)


def micro_run(out, stage="baseline", **overrides):
    settings = dict(stage=stage, out=str(out), train_size=64, batch_size=8, lr=3e-3, warmup=2, log_every=5,
                    save_every=10, size=MICRO, max_images=3)
    settings.update(overrides)
    return train(TrainConfig(**settings))


def test_baseline_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    log = micro_run(tmp_path / "base", steps=40)
    losses = [entry["loss"] for entry in log["loss"]]
    assert losses[-1] < 0.7 * losses[0]
    loaded = load_sam(str(tmp_path / "base"))
    assert loaded.info.guidance_identity  # stage 1 never touches SAM's adapter
    saved = json.loads((tmp_path / "base" / "training_log.json").read_text())
    assert saved["config"]["seed"] == 0 and saved["seconds"] > 0


def test_sam_stage_trains_only_the_adapter(tmp_path):
    micro_run(tmp_path / "base", steps=10)
    before = load_sam(str(tmp_path / "base")).model.state_dict()
    log = micro_run(tmp_path / "sam", stage="sam", model=str(tmp_path / "base"), steps=10, lr=1e-2)
    after = load_sam(str(tmp_path / "sam"))
    assert not after.info.guidance_identity
    width = MICRO.qformer_width
    assert log["trainable_parameters"] == MICRO.vision_width + 1 + 2 * (width * width + width)
    changed = {k for k, v in after.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("guidance.") for k in changed)
    assert (tmp_path / "sam" / "sam_adapter.safetensors").exists()


def test_training_resumes_where_it_stopped(tmp_path):
    micro_run(tmp_path / "run", steps=10)
    log = micro_run(tmp_path / "run", steps=15)
    assert [entry["step"] for entry in log["loss"]] == [5, 10, 15]


def test_adapter_fine_tuning_on_a_four_bit_model_with_authors_schema_data(tmp_path, tiny_checkpoint):
    annotations = write_split(tmp_path / "data", seed=5, size=8)
    log = micro_run(tmp_path / "sam4", stage="sam", model=str(tiny_checkpoint), data=str(annotations),
                    quantization="4bit", steps=3, batch_size=4)
    assert len(log["loss"]) == 1 and torch.isfinite(torch.tensor(log["loss"][0]["loss"]))
    adapter = load_sam(str(tiny_checkpoint), adapter=tmp_path / "sam4" / "sam_adapter.safetensors")
    assert not adapter.info.guidance_identity


def test_vision_stage_learns_the_cells_and_a_frozen_encoder_stays_put(tmp_path):
    log = micro_run(tmp_path / "vision", stage="vision", steps=120, batch_size=16, train_size=2000)
    losses = [entry["loss"] for entry in log["loss"]]
    assert losses[-1] < 0.8 * losses[0]
    colour_chance = 100 / 11
    assert log["cell_accuracy"]["colour"] > 2 * colour_chance  # the heads read the encoder's features
    heads = (MICRO.vision_width + 1) * (len(COLOURS) + 1 + len(SHAPES) + 1)  # discarded after the stage
    encoder = sum(p.numel() for p in load_sam(str(tmp_path / "vision")).model.vision_model.parameters())
    assert log["trainable_parameters"] == encoder + heads
    pretrained = load_sam(str(tmp_path / "vision")).model.state_dict()
    micro_run(tmp_path / "base", model=str(tmp_path / "vision"), freeze_vision=True, steps=5)
    after = load_sam(str(tmp_path / "base")).model.state_dict()
    vision = [k for k in after if k.startswith("vision_model.")]
    assert vision and all(torch.equal(after[k], pretrained[k]) for k in vision)
    assert not all(torch.equal(after[k], pretrained[k]) for k in after if k.startswith("qformer."))


def test_vision_stage_needs_minilink_scenes(tmp_path):
    annotations = write_split(tmp_path / "data", seed=5, size=2)
    with pytest.raises(ValueError, match="minilink"):
        micro_run(tmp_path / "vision", stage="vision", data=str(annotations), steps=2)


def test_a_time_budget_stops_early_and_still_saves(tmp_path):
    log = micro_run(tmp_path / "run", steps=10_000, max_minutes=0.05)
    assert log["stopped_early"]["step"] < 10_000
    assert load_sam(str(tmp_path / "run")).model is not None


def test_difficulty_knobs_reach_the_training_data():
    from sam_core.train import open_dataset

    dataset = open_dataset(TrainConfig(stage="baseline", out="", min_objects=7, max_objects=7, alike=0.0, tasks=("group",),
                                       decoys=True, version=1))
    sample = dataset[0]
    assert sample.task == "group" and all(len(scene) == 7 for scene in sample.scenes)
    assert dataset.config.alike == 0.0 and dataset.config.decoys and dataset.config.version == 1
    assert open_dataset(TrainConfig(stage="baseline", out="")).config.version == 2  # version 2 by default


def test_the_recipe_trains_every_stage_and_the_step_matched_control_and_writes_the_card(tmp_path):
    """The one command behind the embedded default, at a few steps: stage 1, stage 2, the control (stage 1 continued
    with guidance off for as many steps as stage 2), evaluation on the test split and a fresh seed, card, card subset."""
    from sam_core.recipe import main as recipe

    out, work = tmp_path / "minilink", tmp_path / "work"
    recipe(["--out", str(out), "--work", str(work), "--baseline-steps", "2", "--sam-steps", "3", "--batch-size", "2",
            "--test-size", "6", "--extra-seeds", "101", "--second-stage", "joint", "--train-size", "64", "--no-meteor",
            "--calibration-samples", "1"])
    control = json.loads((work / "control" / "training_log.json").read_text())
    assert control["config"]["stage"] == "baseline" and control["config"]["model"] == str(work / "baseline")
    assert control["loss"][-1]["step"] == 3 == json.loads((work / "sam" / "training_log.json").read_text())["loss"][-1]["step"]
    stage1, continued = load_sam(str(work / "baseline")).model.state_dict(), load_sam(str(work / "control"))
    assert continued.info.guidance_identity  # the control never trains guidance
    assert any(not torch.equal(v, stage1[k]) for k, v in continued.model.state_dict().items() if k.startswith("qformer."))
    card = (out / "README.md").read_text()
    assert "MiniLINK version 2" in card and "--second-stage joint" in card and "(seed 1)" in card
    assert "| MiniLINK seed 2 (test) | group |" in card and "| MiniLINK seed 101 | group |" in card
    assert "| MiniLINK seed 2 (test) | group | control |" in card and "rule: no binding: most frequent (counting)" in card
    assert "accuracy proxy" in card
    subset = json.loads((out / "card_subset.json").read_text())
    assert subset["version"] == 2 and subset["decoys"] is False and set(subset["accuracy"]) == {"sam", "baseline"}
    assert (out / "sam_adapter.safetensors").exists() and not (out / "train_state.pt").exists()
    assert load_sam(str(out)).model.config.context == "all"
    assert SamPipeline(load_sam(str(out))).check_domain([Image.new("RGB", (64, 64))]).calibrated


def test_the_recipe_refuses_extra_seeds_that_are_train_dev_or_test(tmp_path):
    from sam_core.recipe import main as recipe

    with pytest.raises(SystemExit):
        recipe(["--out", str(tmp_path / "m"), "--extra-seeds", "1", "101"])
