"""An evaluation run that shares the model: `sam_core.evaluate`'s batches, each taken as one turn with the model
(released in between, so other requests are not starved), stoppable by a cancel event or a time budget within
one decoding step, with a progress callback and per-sample diagnostics for a dataset browser.

    source, options = MiniLinkSource(size=100), EvaluationOptions()
    outcome = run_evaluation(source.open(), options, loaded=load_sam(), cancel=event, progress=print)
    write_outcome(outcome, "runs/eval", "embedded", command(source.arguments(), options), options)

The predictions, the metric rows and the files are the ones `python -m sam_core.evaluate` makes on the same
samples (same batches, `summarise`, `write_results`), so a run here and a run on the command line are
interchangeable; `command()` is that command line.
"""

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from .data import SPLIT_SEEDS, TASKS, MiniLink, MiniLinkConfig
from .evaluate import (
    MODES, RESULT_FILES, PredictedBatch, Prediction, answer_is_correct, linked_patch_masks, only_tasks, open_eval_dataset, predict_batches,
    results_table, rows_label, summarise_split, write_results,
)
from .loading import LoadedSam
from .metrics import score_captions
from .modeling import SamVisualTokens

STOPPED = {"cancelled": "cancelled", "time budget": "stopped at the time budget"}
HANDOVER_SECONDS = 0.005  # after each batch: a thread waiting for the model wakes up and takes it
KEPT_IMAGE_SIDE = 448  # kept copies of the images (for browsing and re-running one sample): at most this many pixels a side


@dataclass(frozen=True)
class MiniLinkSource:
    """A MiniLINK split generated on the fly: `size` samples from `seed` (the test split by default), N drawn
    from min_images..max_images, a fixed number of objects per image (None: the generator's range), tasks. Version 2
    (balanced decoys) unless `decoys`: version 1 with its decoys, the earlier benchmark."""

    size: int = 100
    min_images: int = MiniLinkConfig.min_images
    max_images: int = MiniLinkConfig.max_images
    objects: int | None = None
    decoys: bool = False
    seed: int = SPLIT_SEEDS["test"]
    tasks: tuple[str, ...] = TASKS

    def check(self, max_samples: int, max_images: int) -> None:
        """A ValueError with a one-line message for settings that cannot or may not be run."""
        if not 1 <= self.size <= max_samples:
            raise ValueError(f"The dataset size must be between 1 and {max_samples} samples.")
        if not 2 <= self.min_images <= self.max_images <= max_images:
            raise ValueError(f"The number of images per sample must be a range within 2 to {max_images}.")
        if self.objects is not None and not 3 <= self.objects <= 9:
            raise ValueError("Objects per image must be 3 to 9 (the linked object and the decoys).")
        if not self.tasks or not set(self.tasks) <= set(TASKS):
            raise ValueError(f"Choose at least one task of {', '.join(TASKS)}.")
        if not 0 <= self.seed < 2**31:
            raise ValueError("The seed must be a whole number from 0 to 2147483647.")

    @property
    def version(self) -> int:
        return 1 if self.decoys else MiniLinkConfig.version

    def open(self) -> MiniLink:
        dataset = open_eval_dataset("minilink", self.size, None, self.objects, self.decoys, version=self.version,
                                    seed=self.seed, images=(self.min_images, self.max_images))
        return only_tasks(dataset, None if set(self.tasks) == set(TASKS) else self.tasks)

    def label(self, model_name: str) -> str:
        """The model's rows' label, as the command line writes it for these arguments (the seed, unless the test split)."""
        return rows_label(model_name, self.seed)

    def arguments(self) -> list[str]:
        """The same samples as `python -m sam_core.evaluate` arguments."""
        arguments = ["--data", "minilink", "--size", str(self.size), "--images", str(self.min_images), str(self.max_images)]
        if self.seed != SPLIT_SEEDS["test"]:
            arguments += ["--seeds", str(self.seed)]
        if self.objects is not None:
            arguments += ["--objects", str(self.objects)]
        if self.decoys:
            arguments += ["--version", "1", "--decoys"]
        if set(self.tasks) != set(TASKS):
            arguments += ["--tasks", *[task for task in TASKS if task in self.tasks]]
        return arguments


@dataclass(frozen=True)
class EvaluationOptions:
    """How to run: the CLI's defaults, except METEOR (it starts a Java process; off unless asked for)."""

    batch_size: int = 16
    preset: str = "greedy"
    max_new_tokens: int = 24
    meteor: bool = False
    time_budget: float | None = None  # seconds for the whole run; None: unbounded

    def arguments(self) -> list[str]:
        arguments = ["--preset", self.preset, "--max-new-tokens", str(self.max_new_tokens), "--batch-size", str(self.batch_size)]
        return arguments + ([] if self.meteor else ["--no-meteor"])


def command(data_arguments: list[str], options: EvaluationOptions, out: str = "runs/eval") -> str:
    """The command line that evaluates the same samples the same way."""
    return " ".join(["python -m sam_core.evaluate", *data_arguments, *options.arguments(), "--out", out])


OUTCOMES = {  # SampleResult.outcome → what people call it
    "sam only": "SAM right, baseline wrong",
    "baseline only": "baseline right, SAM wrong",
    "both": "both right",
    "neither": "both wrong",
}


@dataclass
class SampleResult:
    """One sample of a run, for browsing: its prediction, per-sample CIDEr (×100, scored within its task as in
    the table) and correctness per mode, where SAM's guidance weights α sit, the caller's measures (e.g. the
    alignment of each mode's visual tokens) and the kept copies of its images."""

    index: int
    prediction: Prediction
    prompt: str
    cider: dict[str, float] = field(default_factory=dict)
    correct: dict[str, bool] | None = None  # None where task accuracy is not defined (no linked object)
    linked_alpha: float | None = None  # share of SAM's α (patches of all images) on the linked object's patches
    linked_alpha_chance: float | None = None  # that share if α were uniform over the images
    measures: dict[str, float] = field(default_factory=dict)
    image_paths: list[str] = field(default_factory=list)

    @property
    def cider_difference(self) -> float:
        return self.cider["sam"] - self.cider["baseline"]

    @property
    def outcome(self) -> str | None:
        """Which modes answered right: "sam only", "baseline only", "both", "neither" (None: not defined)."""
        if self.correct is None:
            return None
        sam, baseline = self.correct["sam"], self.correct["baseline"]
        return "both" if sam and baseline else "sam only" if sam else "baseline only" if baseline else "neither"

    @property
    def alpha_lift(self) -> float | None:
        """How many times chance α concentrates on the linked object (1: no more than uniform weights)."""
        if self.linked_alpha is None or not self.linked_alpha_chance:
            return None
        return self.linked_alpha / self.linked_alpha_chance

    def to_dict(self) -> dict:
        """Flat, for a table row or a JSON line."""
        p = self.prediction
        row = {"index": self.index, "id": p.id, "task": p.task, "num_images": p.num_images, "linked": p.linked,
               "prompt": self.prompt, "reference": p.reference, **{f"answer_{m}": a for m, a in p.answers.items()},
               **{f"cider_{m}": c for m, c in self.cider.items()}, "cider_difference": self.cider_difference}
        if self.correct is not None:
            row.update({f"correct_{m}": c for m, c in self.correct.items()}, outcome=self.outcome)
        if self.linked_alpha is not None:
            row.update(linked_alpha=self.linked_alpha, linked_alpha_chance=self.linked_alpha_chance, alpha_lift=self.alpha_lift)
        return {**row, **self.measures}


@dataclass
class EvaluationOutcome:
    """What a run produced: every completed sample (a batch cut short by cancelling is dropped whole), the metric
    rows of `summarise_split` over them, how it ended and how long it took."""

    samples: list[SampleResult]
    rows: list[dict]
    status: str  # "complete", "cancelled" or "time budget"
    total: int
    seconds: float  # answering (as the command line's "seconds"), not scoring
    minilink_version: int | None = None  # the shortcut rules' rows are for this MiniLINK version (None: not MiniLINK)

    @property
    def predictions(self) -> list[Prediction]:
        return [sample.prediction for sample in self.samples]

    def result_rows(self, model_name: str) -> list[dict]:
        """The rows as the command line records them (results.json): labelled with the model and the run's time."""
        return [{**row, "model": model_name, "seconds": self.seconds} for row in self.rows]

    def summary(self) -> str:
        done = len(self.samples)
        if self.status == "complete":
            return f"Evaluated {done} sample{'s' * (done != 1)} in {self.seconds:.1f} s."
        return (f"{STOPPED[self.status].capitalize()} after {done} of {self.total} samples ({self.seconds:.1f} s); "
                f"the results cover those {done}.")


class RunInterrupted(Exception):
    """Raised out of generation when a run is cancelled or out of time: the batch in progress is dropped."""


class Interrupt(StoppingCriteria):
    """Ends generation at the next decoding step once `cancel` is set or the deadline passes, by raising
    RunInterrupted (a stopping criterion that only returned True would still let the batch's other mode start)."""

    def __init__(self, cancel: threading.Event | None, deadline: float | None):
        self.cancel, self.deadline = cancel, deadline

    def reason(self) -> str | None:
        if self.cancel is not None and self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "time budget"
        return None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.reason() is not None:
            raise RunInterrupted(self.reason())
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


Turn = Callable[[], AbstractContextManager[LoadedSam]]
Measure = Callable[[dict[str, SamVisualTokens]], list[dict[str, float]]]


def run_evaluation(dataset, options: EvaluationOptions = EvaluationOptions(), *, loaded: LoadedSam | None = None,
                   turn: Turn | None = None, cancel: threading.Event | None = None,
                   progress: Callable[[int, int], None] | None = None, measure: Measure | None = None,
                   image_dir: str | Path | None = None) -> EvaluationOutcome:
    """Evaluate SAM and the baseline on every sample of `dataset`, batch by batch.

    `turn()` gives the model for one batch (e.g. under a serving lock) and takes it back after; pass `loaded`
    instead when nothing else shares it. `cancel` (set from another thread) and `options.time_budget` stop the
    run within one decoding step; `progress(done, total)` follows each batch; `measure(visual)` adds numbers per
    sample from each batch's visual tokens; `image_dir` keeps a copy of every sample's images there."""
    if (loaded is None) == (turn is None):
        raise ValueError("pass exactly one of loaded or turn")
    turn = turn or (lambda: nullcontext(loaded))
    start = time.monotonic()
    interrupt = Interrupt(cancel, None if options.time_budget is None else start + options.time_budget)
    samples, batches, finished = [], None, False
    while interrupt.reason() is None:
        with turn() as model:
            if batches is None:
                batches = predict_batches(model, dataset, MODES, options.batch_size, options.preset,
                                          max_new_tokens=options.max_new_tokens, stopping_criteria=StoppingCriteriaList([interrupt]))
            try:
                batch = next(batches, None)
            except RunInterrupted:  # mid-batch: its answers are incomplete, so the batch is dropped
                break
            geometry = model.model.config.vision_config
        if batch is None:
            finished = True
            break
        samples += describe_batch(batch, dataset, geometry, measure, image_dir)
        if progress is not None:
            progress(len(samples), len(dataset))
        time.sleep(HANDOVER_SECONDS)
    status, seconds = "complete" if finished else interrupt.reason(), time.monotonic() - start
    score_samples(samples)
    rows = summarise_split([s.prediction for s in samples], dataset, MODES, meteor=options.meteor) if samples else []
    version = dataset.config.version if isinstance(dataset, MiniLink) else None
    return EvaluationOutcome(samples, rows, status, len(dataset), seconds, version)


def describe_batch(batch: PredictedBatch, dataset, geometry, measure: Measure | None, image_dir) -> list[SampleResult]:
    samples = [SampleResult(*row) for row in zip(batch.indices, batch.predictions, batch.prompts)]
    alpha = batch.visual["sam"].guidance_weights
    if isinstance(dataset, MiniLink) and alpha is not None:
        shares, chances = linked_alpha_shares(alpha, [dataset[i] for i in batch.indices], dataset.config.image_size, geometry)
        for sample, share, chance in zip(samples, shares, chances):
            sample.linked_alpha, sample.linked_alpha_chance = share, chance
    if measure is not None:
        for sample, values in zip(samples, measure(batch.visual)):
            sample.measures = values
    if image_dir is not None:
        for sample, images in zip(samples, batch.images):
            sample.image_paths = keep_images(images, Path(image_dir), sample.index)
    return samples


def linked_alpha_shares(alpha: torch.Tensor, minilink_samples, scene_size: int, geometry) -> tuple[list[float], list[float]]:
    """Per sample, the share of SAM's α over all images' patches (CLS left out) that lies on the linked object's
    patches, and that share under uniform weights (1/N per image). α is (B, N, P) for context "all" and
    (B, N_target, N_source, P) for "others" (averaged over targets: each target's weights over sources)."""
    alpha = alpha.float().cpu()
    if alpha.dim() == 4:
        alpha = alpha.mean(dim=1)
    alpha = alpha[..., 1:]  # (B, N, P - 1)
    masks = torch.stack([
        linked_patch_masks(sample, scene_size, geometry.image_size, geometry.patch_size) for sample in minilink_samples
    ]).float()  # (B, N, P - 1)
    total = alpha.sum(dim=(1, 2))
    shares = (alpha * masks).sum(dim=(1, 2)) / total
    chances = masks.sum(dim=(1, 2)) / masks.shape[1] / total
    return shares.tolist(), chances.tolist()


def keep_images(images: list[Image.Image], folder: Path, index: int) -> list[str]:
    """PNG copies of one sample's images, at most KEPT_IMAGE_SIDE pixels a side (lossless at MiniLINK's size)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, image in enumerate(images):
        copy = image.copy()
        copy.thumbnail((KEPT_IMAGE_SIDE, KEPT_IMAGE_SIDE), Image.BICUBIC)
        path = folder / f"{index}-{position}.png"
        copy.save(path)
        paths.append(str(path))
    return paths


def score_samples(samples: list[SampleResult]) -> None:
    """Per-sample CIDEr per mode, scored within each task as `summarise` scores it, and correctness where the
    task has a linked object."""
    for task in {s.prediction.task for s in samples}:
        subset = [s for s in samples if s.prediction.task == task]
        references = [s.prediction.reference for s in subset]
        for mode in MODES:
            scores = score_captions([s.prediction.answers[mode] for s in subset], references, meteor=False)
            for sample, cider in zip(subset, scores.per_sample["cider"]):
                sample.cider[mode] = cider
        if all(s.prediction.linked for s in subset):
            for sample in subset:
                sample.correct = {mode: answer_is_correct(sample.prediction, mode) for mode in MODES}


def write_outcome(outcome: EvaluationOutcome, out: str | Path, model_name: str, command_line: str,
                  options: EvaluationOptions) -> list[Path]:
    """The CLI's files for this run (see `sam_core.evaluate.write_results`); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictions = {model_name: [asdict(p) for p in outcome.predictions]}
    rows = outcome.result_rows(model_name)
    write_results(out, rows, predictions, command_line, options.preset, options.max_new_tokens,
                  table=results_table(rows, outcome.minilink_version))
    return [out / name for name in RESULT_FILES]

