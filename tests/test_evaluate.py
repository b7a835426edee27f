import json

import pytest

from sam_core.data import MiniLink, MiniLinkConfig
from sam_core.evaluate import main, markdown_table, predict, summarise
from sam_core.generation import SamPipeline
from sam_core.loading import LoadedSam, ModelInfo


@pytest.fixture
def loaded(make_model, processor):
    model = make_model(active=True)
    return LoadedSam(model, processor, ModelInfo("tiny", "test", "none", "cpu", "float32", None, "all", 3, 4, False))


def test_batched_predictions_equal_one_by_one_generation(loaded):
    dataset = MiniLink(2, 6, MiniLinkConfig(min_images=2, max_images=3))
    predictions = predict(loaded, dataset, batch_size=4, max_new_tokens=6)
    assert sorted(p.id for p in predictions) == sorted(dataset[i].id for i in range(6))
    pipeline = SamPipeline(loaded)
    for prediction in predictions:
        sample = dataset[int(prediction.id.split("-")[1])]
        single = pipeline.generate(sample.images, sample.instruction, max_new_tokens=6)
        assert prediction.answers == {mode: answer.text for mode, answer in single.answers.items()}
        assert prediction.reference == sample.output and prediction.linked == sample.linked


def test_summary_rows_report_every_metric_with_intervals(loaded):
    dataset = MiniLink(2, 8, MiniLinkConfig(tasks=("group",)))
    rows = summarise(predict(loaded, dataset, max_new_tokens=6), meteor=False)
    assert [(r["task"], r["mode"]) for r in rows] == [("group", "sam"), ("group", "baseline")]
    for row in rows:
        assert row["n"] == 8 and {"bleu4", "rouge_l", "cider", "accuracy", "cider_ci", "accuracy_ci"} <= set(row)
    assert "sam_cider_ratio" not in rows[0]  # SAM's row is what the others are compared with
    assert rows[1]["sam_cider_ratio"] is None or len(rows[1]["sam_cider_ratio"]) == 3
    assert len(rows[1]["sam_accuracy_gain"]) == 3
    assert "| group | sam | 8 |" in markdown_table(rows, "tiny")


def test_known_answers_score_perfect_accuracy(loaded):
    dataset = MiniLink(2, 6, MiniLinkConfig(tasks=("group",)))
    perfect = {dataset[i].id: dataset[i].output for i in range(6)}
    predictions = predict(loaded, dataset, max_new_tokens=2)
    for prediction in predictions:
        prediction.answers["sam"] = perfect[prediction.id]
    rows = summarise(predictions, meteor=False)
    assert rows[0]["accuracy"] == 100.0 and rows[0]["rouge_l"] > 99.9
    assert rows[1]["accuracy"] < 100.0


def test_question_answers_are_scored_against_the_reference(loaded):
    from sam_core.evaluate import Prediction, answer_is_correct

    question = Prediction("1", "question", "red star", "red .", {"sam": "Red.", "baseline": "red star"})
    assert answer_is_correct(question, "sam") and not answer_is_correct(question, "baseline")
    group = Prediction("2", "group", "red star", "every picture shows a red star .", {"sam": "a red star", "baseline": "a star"})
    assert answer_is_correct(group, "sam") and not answer_is_correct(group, "baseline")


def test_command_writes_predictions_table_and_plot(tmp_path, tiny_checkpoint, capsys):
    main(["--model", f"tiny={tiny_checkpoint}", "--size", "4", "--num-images", "2", "3", "--tasks", "group",
          "--max-new-tokens", "3", "--no-meteor", "--out", str(tmp_path)])
    assert "| tiny N=2 | group | sam |" in capsys.readouterr().out
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["model"] for r in rows} == {"tiny N=2", "tiny N=3"}
    assert (tmp_path / "results.png").stat().st_size > 1000 and "Made by" in (tmp_path / "results.md").read_text()


def test_shipped_checkpoint_reproduces_its_model_card_accuracy():
    from sam_core.evaluate import subset_accuracy
    from sam_core.loading import EMBEDDED_DEFAULT, load_sam

    card = json.loads((EMBEDDED_DEFAULT / "card_subset.json").read_text())
    one_sample = 100.0 / card["size"]
    for quantization in dict.fromkeys([card.get("quantization", "auto"), "auto"]):  # the card's precision, and the app's
        loaded = load_sam(quantization=quantization)
        measured = subset_accuracy(loaded, card["size"], card["tasks"], card.get("decoys", False), card.get("version", 1))
        for mode in ("sam", "baseline"):
            assert abs(measured[mode] - card["accuracy"][mode]) <= one_sample + 1e-9, (quantization, mode, measured, card)


def test_object_patch_mask_marks_the_patches_under_the_box():
    from sam_core.data import SceneObject
    from sam_core.evaluate import object_patch_mask

    obj = SceneObject("red", "star", (0, 1), (24, 0, 40, 15))  # scene pixels of a 64 px scene
    mask = object_patch_mask(obj, scene_size=64, image_size=64, patch_size=8).view(8, 8)
    assert mask.sum() == 4 and mask[0:2, 3:5].all()  # centres 28 and 36 across, 4 and 12 down
    half = object_patch_mask(obj, scene_size=64, image_size=32, patch_size=8).view(4, 4)
    assert half.sum() == 2 and half[0, 1:3].all()  # a 32 px model: centres at 8, 24, 40, 56 scene pixels


def test_linked_attention_share_is_a_share_per_mode(loaded):
    from sam_core.evaluate import linked_attention_share

    shares = linked_attention_share(loaded, size=6, batch_size=4)
    assert set(shares) == {"sam", "baseline"} and all(0 < share < 1 for share in shares.values())


def test_linked_attention_share_is_measured_in_the_evaluations_setting(loaded):
    """With decoys (or a fixed number of objects) the share is over those images, not the default ones."""
    from sam_core.evaluate import eval_config, linked_attention_share

    plain = linked_attention_share(loaded, size=4, batch_size=4, config=eval_config(version=1))
    assert linked_attention_share(loaded, size=4, batch_size=4, config=eval_config(decoys=True, version=1)) != plain
    assert linked_attention_share(loaded, size=4, batch_size=4, config=eval_config(objects=1, version=1)) != plain
    assert linked_attention_share(loaded, size=4, batch_size=4, config=eval_config()) != plain


def test_evaluation_knobs_fix_images_and_objects_per_sample():
    from sam_core.evaluate import only_tasks, open_eval_dataset

    dataset = only_tasks(open_eval_dataset("minilink", 6, num_images=2, objects=1, version=1), ["group"])
    samples = [dataset[i] for i in range(6)]
    assert all(s.task == "group" and len(s.images) == 2 for s in samples)
    assert all(len(scene) == 1 and scene[0].name == s.linked for s in samples for scene in s.scenes)
    with_decoys = only_tasks(open_eval_dataset("minilink", 6, num_images=2, decoys=True, version=1), ["group"])
    assert with_decoys.config.decoys and [with_decoys[i].linked for i in range(6)] == [s.linked for s in samples]
    version_2 = only_tasks(open_eval_dataset("minilink", 6, num_images=2), ["group"])
    assert version_2.config.version == 2 and [version_2[i].linked for i in range(6)] == [s.linked for s in samples]
    dev = open_eval_dataset("minilink", 6, num_images=None, seed=1)
    assert dev.seed == 1 and dev[0].id == "1-0"


def test_the_control_and_fresh_seeds_get_their_own_rows_and_a_headline(tmp_path, tiny_checkpoint, capsys):
    """--control adds the step-matched baseline's guidance-off answers as 'control' rows, compared with SAM;
    --seeds evaluates several splits; the rules' rows sit beside the models'."""
    main(["--model", f"tiny={tiny_checkpoint}", "--control", str(tiny_checkpoint), "--size", "6", "--seeds", "2", "101",
          "--tasks", "group", "--max-new-tokens", "3", "--no-meteor", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["model"] for r in rows} == {"tiny seed 2 (test)", "tiny seed 101"}
    control = [r for r in rows if r["mode"] == "control"]
    baseline = {r["model"]: r for r in rows if r["mode"] == "baseline"}
    assert len(control) == 2 and all(r["accuracy"] == baseline[r["model"]]["accuracy"] for r in control)  # same weights
    assert all("sam_accuracy_gain" in r for r in control)
    assert any(r["mode"].startswith("rule: no binding: most frequent") for r in rows)
    assert printed.startswith("| split | task | n | accuracy % SAM / control / guidance off / best no-binding rule (chance)")
    assert "| tiny seed 101 | group | " in printed
