import json

import pytest
import torch

from sam_core.data import COLOURS, SHAPES, write_split
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
                                       decoys=True))
    sample = dataset[0]
    assert sample.task == "group" and all(len(scene) == 7 for scene in sample.scenes)
    assert dataset.config.alike == 0.0 and dataset.config.decoys


def test_the_recipe_writes_a_loadable_checkpoint_with_its_card_and_data_setting(tmp_path):
    """The one command behind the embedded default, at a few steps: both stages, evaluation, card, card subset."""
    from sam_core.recipe import main as recipe

    out = tmp_path / "minilink"
    recipe(["--out", str(out), "--work", str(tmp_path / "work"), "--baseline-steps", "2", "--sam-steps", "2",
            "--batch-size", "2", "--test-size", "6", "--decoys"])
    card = (out / "README.md").read_text()
    assert "with decoys" in card and "--decoys" in card and "| group | sam |" in card
    subset = json.loads((out / "card_subset.json").read_text())
    assert subset["decoys"] is True and set(subset["accuracy"]) == {"sam", "baseline"}
    assert (out / "sam_adapter.safetensors").exists() and not (out / "train_state.pt").exists()
    assert load_sam(str(out)).model.config.context == "all"
