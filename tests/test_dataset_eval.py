"""Dataset evaluation as a shared service (sam_core.evaluation_run, visualization.dataset_views): the same numbers
and files as `python -m sam_core.evaluate`, cancelling and the time budget within a second, the model released
between batches, and the per-sample diagnostics the browser and the views are built from."""

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from sam_core.data import MiniLink, MiniLinkConfig
from sam_core.evaluate import RESULT_FILES, main, summarise_split
from sam_core.evaluation_run import (
    EvaluationOptions, MiniLinkSource, SampleResult, command, linked_alpha_shares, run_evaluation, write_outcome,
)
from sam_core.loading import LoadedSam, ModelInfo, load_sam
from visualization.dataset_views import alignment_measure, dataset_views


@pytest.fixture
def loaded(make_model, processor):
    model = make_model(active=True)
    return LoadedSam(model, processor, ModelInfo("tiny", "test", "none", "cpu", "float32", None, "all", 3, 4, False))


def counted(loaded: LoadedSam, seconds: float = 0.0) -> list[float]:
    """Record when every language-model step of `loaded` starts (each made `seconds` slower); the list fills as it runs."""
    language_model, starts = loaded.model.language_model, []
    forward = language_model.forward

    def recorded_forward(*args, **kwargs):
        starts.append(time.monotonic())
        time.sleep(seconds)
        return forward(*args, **kwargs)

    language_model.forward = recorded_forward
    return starts


def test_a_run_writes_what_the_command_line_writes_for_its_own_command(tmp_path, tiny_checkpoint):
    """The command a run prints, run on the command line, gives the same predictions, metrics and files."""
    source = MiniLinkSource(size=7, min_images=2, max_images=3, objects=4, decoys=True, seed=11, tasks=("group", "story"))
    options = EvaluationOptions(max_new_tokens=4, batch_size=4)
    line = command(source.arguments(), options, out=str(tmp_path / "cli"))
    outcome = run_evaluation(source.open(), options, loaded=load_sam(str(tiny_checkpoint)))
    assert outcome.status == "complete" and len(outcome.samples) == 7
    files = write_outcome(outcome, tmp_path / "tab", source.label("tiny"), line, options)

    main(["--model", f"tiny={tiny_checkpoint}", *line.split()[3:]])
    for name in RESULT_FILES:
        assert (tmp_path / "cli" / name).exists() and tmp_path / "tab" / name in files
    cli_rows, tab_rows = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("cli", "tab"))
    for rows in (cli_rows, tab_rows):
        for row in rows:
            row.pop("seconds")
    assert tab_rows == cli_rows and {r["task"] for r in tab_rows} == {"group", "story"}
    for name in ("predictions.json", "predictions.csv"):
        assert (tmp_path / "tab" / name).read_text() == (tmp_path / "cli" / name).read_text()
    table = lambda run: (tmp_path / run / "results.md").read_text().split("\n\nMade by")[0]  # noqa: E731
    assert table("tab") == table("cli")
    assert line in (tmp_path / "tab" / "results.md").read_text()


def test_per_sample_scores_add_up_to_the_table(loaded):
    outcome = run_evaluation(MiniLink(2, 10, MiniLinkConfig()), EvaluationOptions(max_new_tokens=5), loaded=loaded)
    for row in (row for row in outcome.rows if not row["mode"].startswith("rule:")):  # the rules' rows: test_shortcuts
        chosen = [s for s in outcome.samples if s.prediction.task == row["task"]]
        assert row["n"] == len(chosen)
        assert row["cider"] == pytest.approx(sum(s.cider[row["mode"]] for s in chosen) / len(chosen))
        assert row["accuracy"] == pytest.approx(100 * sum(s.correct[row["mode"]] for s in chosen) / len(chosen))
    assert outcome.rows == summarise_split(outcome.predictions, MiniLink(2, 10, MiniLinkConfig()), meteor=False)


def test_cancel_stops_a_run_within_a_step_and_keeps_the_finished_batches(loaded):
    """Cancelling takes effect at the next decoding step (one step of the 7B model on a GPU is tens of
    milliseconds; benchmarks/evaluation.py measures it in seconds), not at the end of the batch (48 steps here)."""
    steps = counted(loaded, 0.01)
    dataset = MiniLink(2, 40, MiniLinkConfig(min_images=2, max_images=2))
    cancel, done, outcomes = threading.Event(), [], []
    options = EvaluationOptions(max_new_tokens=24, batch_size=4)  # a batch: 2 modes × 24 steps
    worker = threading.Thread(target=lambda: outcomes.append(run_evaluation(
        dataset, options, loaded=loaded, cancel=cancel, progress=lambda finished, total: done.append(finished))))
    worker.start()
    while len(steps) < 48 + 10:  # the first batch is done, the second one is being decoded
        time.sleep(0.002)
    cancel.set()
    cancelled_at = time.monotonic()
    worker.join(timeout=120)
    assert sum(start > cancelled_at for start in steps) <= 1  # one that began as Cancel was pressed, at most
    outcome = outcomes[0]
    assert outcome.status == "cancelled" and "Cancelled after" in outcome.summary()
    assert len(outcome.samples) == 4 and done == [4]  # the batch cut short is dropped whole
    assert sum(row["n"] for row in outcome.rows if row["mode"] in ("sam", "baseline")) == 2 * 4


def test_the_time_budget_stops_a_run_with_the_samples_done(loaded):
    steps = counted(loaded, 0.01)
    start = time.monotonic()
    outcome = run_evaluation(MiniLink(2, 40, MiniLinkConfig(min_images=2, max_images=2)),
                             EvaluationOptions(max_new_tokens=24, batch_size=4, time_budget=0.3), loaded=loaded)
    assert outcome.status == "time budget" and "time budget" in outcome.summary()
    assert sum(step > start + 0.3 for step in steps) <= 1  # one that began as the budget ran out, at most
    assert len(outcome.samples) < 40


def test_the_model_is_free_between_batches(loaded):
    """Another request waiting for the model gets it while the evaluation is still running."""
    counted(loaded, 0.01)
    lock, turns = threading.Lock(), []

    @contextmanager
    def turn():
        with lock:
            turns.append(time.monotonic())
            yield loaded

    worker = threading.Thread(target=run_evaluation, args=(MiniLink(2, 32, MiniLinkConfig(min_images=2, max_images=2)),
                                                          EvaluationOptions(max_new_tokens=12, batch_size=4)),
                              kwargs={"turn": turn})
    worker.start()
    while not turns:
        time.sleep(0.005)
    assert lock.acquire(timeout=120)
    lock.release()
    assert worker.is_alive() and len(turns) < 8  # served in the middle of the run, not after it
    worker.join()
    assert len(turns) == 9  # 8 batches and the turn that finds no more


def test_linked_alpha_share_is_one_on_the_object_and_chance_when_uniform(loaded):
    dataset = MiniLink(2, 2, MiniLinkConfig(min_images=3, max_images=3))
    samples = [dataset[0], dataset[1]]
    geometry = loaded.model.config.vision_config
    from sam_core.evaluate import linked_patch_masks

    masks = torch.stack([linked_patch_masks(s, 64, geometry.image_size, geometry.patch_size) for s in samples]).float()
    patches = masks.shape[-1] + 1
    uniform = torch.full((2, 3, patches), 1 / 3)
    shares, chances = linked_alpha_shares(uniform, samples, 64, geometry)
    assert shares == pytest.approx(chances) and all(0 < c < 1 for c in chances)
    on_object = torch.zeros(2, 3, patches)
    on_object[..., 1:] = masks / masks.sum(dim=1, keepdim=True).clamp(min=1)  # every covered patch: weight on the object
    on_object[..., 1:] += (masks.sum(dim=1, keepdim=True) == 0) / 3  # uncovered patches: uniform
    shares, chances = linked_alpha_shares(on_object, samples, 64, geometry)
    assert all(share > chance for share, chance in zip(shares, chances))
    others = uniform[:, :, None].expand(2, 3, 3, patches)  # context "others": (B, N_target, N_source, P)
    assert linked_alpha_shares(others, samples, 64, geometry)[0] == pytest.approx(chances)


def test_views_group_every_sample_and_measure_alignment(loaded, tmp_path):
    outcome = run_evaluation(MiniLink(2, 24, MiniLinkConfig()), EvaluationOptions(max_new_tokens=4), loaded=loaded,
                             measure=alignment_measure, image_dir=tmp_path)
    sample = outcome.samples[0]
    assert {"alignment_sam", "alignment_baseline"} <= set(sample.measures) and sample.linked_alpha is not None
    assert len(sample.image_paths) == sample.prediction.num_images and all(p.startswith(str(tmp_path)) for p in sample.image_paths)
    views = {view.name: view for view in dataset_views(outcome.samples)}
    assert set(views) == {"by_images", "by_task", "by_alpha", "alignment"}
    for name in ("by_images", "by_task", "by_alpha"):
        assert sum(row["n"] for row in views[name].rows) == 24 and views[name].figure is not None
        for row in views[name].rows:
            assert row["cider_low"] <= row["cider_difference"] <= row["cider_high"]
            assert row["accuracy_difference"] == pytest.approx(row["accuracy_sam"] - row["accuracy_baseline"])
    assert views["alignment"].rows[0]["group"] == "all samples" and views["alignment"].rows[0]["n"] == 24


def test_views_without_a_linked_object_compare_cider_only(loaded):
    outcome = run_evaluation(MiniLink(2, 6, MiniLinkConfig(tasks=("group",))), EvaluationOptions(max_new_tokens=3), loaded=loaded)
    samples = [replace(s, prediction=replace(s.prediction, linked=None), correct=None, linked_alpha=None) for s in outcome.samples]
    views = {view.name: view for view in dataset_views(samples)}
    assert set(views) == {"by_images", "by_task"}
    assert "accuracy_sam" not in views["by_task"].rows[0] and "cider_difference" in views["by_task"].rows[0]
    assert all(s.outcome is None for s in samples)


def test_outcomes_name_who_answered_right():
    from sam_core.evaluate import Prediction

    def sample(sam, baseline):
        return SampleResult(0, Prediction("1", "group", "red star", "ref", {"sam": "", "baseline": ""}, 2), "prompt",
                            correct={"sam": sam, "baseline": baseline})

    assert [sample(*pair).outcome for pair in ((True, False), (False, True), (True, True), (False, False))] == [
        "sam only", "baseline only", "both", "neither"]


def test_minilink_settings_are_checked_with_one_line_messages():
    with pytest.raises(ValueError, match="between 1 and 50"):
        MiniLinkSource(size=51).check(max_samples=50, max_images=6)
    with pytest.raises(ValueError, match="within 2 to 4"):
        MiniLinkSource(min_images=3, max_images=5).check(max_samples=200, max_images=4)
    for decoys in (False, True):  # version 2, and version 1 with decoys: the linked object and the decoys
        with pytest.raises(ValueError, match="3 to 9"):
            MiniLinkSource(objects=2, decoys=decoys).check(max_samples=200, max_images=6)
    with pytest.raises(ValueError, match="at least one task"):
        MiniLinkSource(tasks=()).check(max_samples=200, max_images=6)
    MiniLinkSource(objects=3).check(max_samples=200, max_images=6)
    assert MiniLinkSource(decoys=True).open().config.version == 1 and MiniLinkSource().open().config.version == 2
