"""Evaluation: SAM next to the baseline on the same samples, with the authors' metrics and task accuracy.

    python -m sam_core.evaluate --model checkpoints/minilink --data minilink --size 600 --out runs/eval
    python -m sam_core.evaluate --model k1=runs/k1/sam k2=runs/k2/sam --num-images 2 3 4 5 6 --tasks group

Writes predictions.json/.csv, results.json/.csv, results.md and results.png to --out and prints the markdown table
(with --linked-attention, also linked_attention.json: how much of the extraction's attention lands on the linked
object, SAM next to the baseline).
`--data` is "minilink" (the held-out test split, generated from its own seed) or an annotations.json in the
authors' schema (records may carry "task" and "linked" for accuracy).
"""

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data import (
    SPLIT_SEEDS, TASKS, AnnotationDataset, MiniLink, MiniLinkConfig, MiniLinkSample, SceneObject, names_linked_object,
    read_items,
)
from .generation import generation_kwargs
from .loading import QUANTIZATIONS, LoadedSam, load_sam
from .metrics import bootstrap_interval, normalize_answer, paired_bootstrap_ratio, score_captions
from .modeling import SamVisualTokens
from .train import batch_indices

MODES = ("sam", "baseline")


@dataclass
class Prediction:
    id: str
    task: str
    linked: str | None
    reference: str
    answers: dict[str, str]
    num_images: int | None = None


@dataclass
class PredictedBatch:
    """One batch of `predict_batches`: the dataset indices, their predictions, the images and prompts read and
    each mode's visual tokens (for per-sample diagnostics such as the guidance weights)."""

    indices: list[int]
    predictions: list[Prediction]
    images: list[list]
    prompts: list[str]
    visual: dict[str, SamVisualTokens]


@torch.no_grad()
def predict_batches(loaded: LoadedSam, dataset, modes=MODES, batch_size: int = 16, preset: str = "greedy",
                    **overrides) -> Iterator[PredictedBatch]:
    """Answers of every mode for every sample, one batch (of samples with the same N) at a time; SAM and baseline
    share one vision pass per batch. The order is fixed, so any consumer sees the same batches."""
    model, processor = loaded.model, loaded.processor
    settings = generation_kwargs(preset, **overrides)
    device = model.query_tokens.device
    for indices in sorted(batch_indices(dataset, batch_size, seed=0, epoch=0), key=min):
        image_sets, prompts, references, records = read_items(dataset, indices)
        inputs = processor(image_sets, prompts).to(device)
        ids, mask, pixels = inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"]
        if set(modes) == set(MODES):
            sam, baseline = model.extract_compare(ids, mask, pixels)
            visual = {"sam": sam, "baseline": baseline}
        else:
            visual = {mode: model.extract_visual_tokens(ids, mask, pixels, guidance=mode == "sam") for mode in modes}
        texts = {
            mode: processor.decode(
                model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], visual=tokens,
                               new_tokens_only=True, **settings)
            )
            for mode, tokens in visual.items()
        }
        predictions = [
            Prediction(str(record["id"]), record.get("task", "all"), record.get("linked"), reference,
                       {mode: texts[mode][row] for mode in modes}, len(images))
            for row, (reference, record, images) in enumerate(zip(references, records, image_sets))
        ]
        yield PredictedBatch(list(indices), predictions, image_sets, prompts, visual)


def predict(loaded: LoadedSam, dataset, modes=MODES, batch_size: int = 16, preset: str = "greedy", **overrides) -> list[Prediction]:
    """Answers of every mode for every sample (see `predict_batches`)."""
    batches = predict_batches(loaded, dataset, modes, batch_size, preset, **overrides)
    return [prediction for batch in batches for prediction in batch.predictions]


def answer_is_correct(prediction: Prediction, mode: str) -> bool:
    """Group captioning and storytelling: the answer names the linked object; a question: the answer is the
    reference (after the authors' normalisation)."""
    answer = prediction.answers[mode]
    if prediction.task == "question":
        return normalize_answer(answer) == normalize_answer(prediction.reference)
    return names_linked_object(answer, prediction.linked)


def summarise(predictions: list[Prediction], modes=MODES, meteor: bool = True) -> list[dict]:
    """One row per (task, mode): n, BLEU-4, ROUGE-L, CIDEr, METEOR, accuracy (all ×100), with 95% intervals;
    a SAM ÷ baseline CIDEr ratio with a paired bootstrap interval on the SAM rows."""
    rows = []
    for task in sorted({p.task for p in predictions}, key=lambda t: (TASKS + (t,)).index(t)):
        subset = [p for p in predictions if p.task == task]
        per_mode = {}
        for mode in modes:
            scores = score_captions([p.answers[mode] for p in subset], [p.reference for p in subset], meteor=meteor)
            row = {"task": task, "mode": mode, **scores.to_dict()}
            row["cider_ci"] = bootstrap_interval(scores.per_sample["cider"])
            if all(p.linked for p in subset):
                correct = [100.0 * answer_is_correct(p, mode) for p in subset]
                row["accuracy"] = sum(correct) / len(correct)
                row["accuracy_ci"] = bootstrap_interval(correct)
                per_mode.setdefault("accuracy", {})[mode] = correct
            per_mode.setdefault("cider", {})[mode] = scores.per_sample["cider"]
            rows.append(row)
        if set(MODES) <= set(modes):
            sam_row = next(r for r in rows if r["task"] == task and r["mode"] == "sam")
            try:
                sam_row["cider_ratio"] = paired_bootstrap_ratio(per_mode["cider"]["sam"], per_mode["cider"]["baseline"])
            except ValueError:  # the baseline scores 0 (in some resamples): no finite ratio
                sam_row["cider_ratio"] = None
    return rows


CARD_SUBSET = {"size": 48, "tasks": ("group",)}  # the fixed subset the shipped checkpoint's card records


def subset_accuracy(loaded: LoadedSam, size: int = CARD_SUBSET["size"], tasks=CARD_SUBSET["tasks"],
                    decoys: bool = False) -> dict[str, float]:
    """Task accuracy (%) per mode on the first `size` MiniLINK test samples of `tasks`: small enough for a test
    to check that a checkpoint still scores what its model card says."""
    dataset = MiniLink(SPLIT_SEEDS["test"], size, MiniLinkConfig(tasks=tuple(tasks), decoys=decoys))
    predictions = predict(loaded, dataset)
    return {mode: 100.0 * sum(answer_is_correct(p, mode) for p in predictions) / len(predictions) for mode in MODES}


def object_patch_mask(obj: SceneObject, scene_size: int, image_size: int, patch_size: int) -> torch.Tensor:
    """(P - 1,) True for the patches whose centre lies inside the object's box (the box scaled to the model's size)."""
    side = image_size // patch_size
    centres = (torch.arange(side) * patch_size + patch_size / 2) * scene_size / image_size  # in scene pixels
    x0, y0, x1, y1 = obj.box
    inside_x, inside_y = (centres >= x0) & (centres <= x1), (centres >= y0) & (centres <= y1)
    return (inside_y[:, None] & inside_x[None, :]).flatten()


def linked_patch_masks(sample: MiniLinkSample, scene_size: int, image_size: int, patch_size: int) -> torch.Tensor:
    """(N, P - 1): the linked object's patches in every image of a sample."""
    linked = [next(obj for obj in scene if obj.name == sample.linked) for scene in sample.scenes]
    return torch.stack([object_patch_mask(obj, scene_size, image_size, patch_size) for obj in linked])


@torch.no_grad()
def linked_attention_share(loaded: LoadedSam, size: int = 160, batch_size: int = 16,
                           config: MiniLinkConfig = MiniLinkConfig()) -> dict[str, float]:
    """Where extraction looks: the mean share of the last Q-Former layer's query attention (heads and queries
    averaged, CLS left out) that falls on the linked object's patches, per mode, over the images of the first
    `size` MiniLINK group-captioning test samples in the setting `config` (objects per image, decoys). Guidance
    that selects the linked object raises SAM's share."""
    model, processor = loaded.model, loaded.processor
    vision = model.config.vision_config
    dataset = MiniLink(SPLIT_SEEDS["test"], size, replace(config, tasks=("group",)))
    shares = {mode: [] for mode in MODES}
    for indices in batch_indices(dataset, batch_size, seed=0, epoch=0):
        samples = [dataset[index] for index in indices]
        inputs = processor([s.images for s in samples], [s.instruction for s in samples]).to(model.query_tokens.device)
        masks = torch.stack([linked_patch_masks(s, dataset.config.image_size, vision.image_size, vision.patch_size) for s in samples])
        sam, baseline = model.extract_compare(
            inputs["qformer_input_ids"], inputs["qformer_attention_mask"], inputs["pixel_values"], output_attentions=True
        )
        for mode, visual in (("sam", sam), ("baseline", baseline)):
            attention = visual.image_cross_attentions[-1].float().mean(dim=(2, 3))[..., 1:].cpu()  # (B, N, P - 1)
            shares[mode] += (attention * masks).sum(-1).flatten().tolist()
    return {mode: sum(values) / len(values) for mode, values in shares.items()}


def markdown_table(rows: list[dict], label: str = "") -> str:
    header = "| model | task | mode | n | BLEU-4 | ROUGE-L | CIDEr (95% CI) | METEOR | accuracy % (95% CI) | CIDEr SAM ÷ baseline (95% CI) |"
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        accuracy = f"{r['accuracy']:.1f} ({r['accuracy_ci'][0]:.1f}–{r['accuracy_ci'][1]:.1f})" if "accuracy" in r else "–"
        ratio = "–" if r.get("cider_ratio", 0) is not None else "undefined (baseline CIDEr 0)"
        if r.get("cider_ratio"):
            value, low, high = r["cider_ratio"]
            ratio = f"{value:.2f}× ({low:.2f}–{high:.2f})"
        meteor = f"{r['meteor']:.1f}" if r.get("meteor") is not None else "–"
        lines.append(
            f"| {r.get('model', label)} | {r['task']} | {r['mode']} | {r['n']} | {r['bleu4']:.1f} | {r['rouge_l']:.1f} "
            f"| {r['cider']:.1f} ({r['cider_ci'][0]:.1f}–{r['cider_ci'][1]:.1f}) | {meteor} | {accuracy} | {ratio} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """CIDEr and accuracy per task (and per model/N when sweeping), SAM next to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r.get("model", ""), r["task"]) for r in rows))
    metrics = [m for m in ("cider", "accuracy") if any(m in r for r in rows)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(max(5, 1.3 * len(groups)) * len(metrics), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for offset, (mode, colour) in enumerate((("baseline", "#9e9e9e"), ("sam", "#1f77b4"))):
            values = [next((r.get(metric, 0) for r in rows if (r.get("model", ""), r["task"]) == g and r["mode"] == mode), 0) for g in groups]
            axis.bar([i + (offset - 0.5) * 0.38 for i in range(len(groups))], values, width=0.38, color=colour, label=mode)
        axis.set_xticks(range(len(groups)), [f"{m}\n{t}".strip() for m, t in groups], fontsize=8)
        axis.set_title("CIDEr" if metric == "cider" else "task accuracy (%)")
        axis.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def eval_config(num_images: int | None = None, objects: int | None = None, decoys: bool = False,
                images: tuple[int, int] | None = None) -> MiniLinkConfig:
    """The MiniLINK setting of an evaluation: optionally a fixed N (or N drawn from an `images` range), a fixed
    number of objects per image, decoys."""
    config = MiniLinkConfig(decoys=decoys)
    if images is not None:
        config = replace(config, min_images=images[0], max_images=images[1])
    if num_images is not None:
        config = replace(config, min_images=num_images, max_images=num_images)
    if objects is not None:
        config = replace(config, min_objects=objects, max_objects=objects)
    return config


def open_eval_dataset(data: str, size: int, num_images: int | None, objects: int | None = None, decoys: bool = False,
                      seed: int = SPLIT_SEEDS["test"], images: tuple[int, int] | None = None):
    """MiniLINK samples from `seed` (the test split by default) in the setting `eval_config` builds, or an
    annotations file."""
    if data == "minilink":
        return MiniLink(seed, size, eval_config(num_images, objects, decoys, images))
    return AnnotationDataset(data)


def only_tasks(dataset, tasks):
    """MiniLINK restricted to some tasks (regenerates the split with those task weights, same seed)."""
    if tasks is None or not isinstance(dataset, MiniLink):
        return dataset
    return MiniLink(dataset.seed, dataset.size, replace(dataset.config, tasks=tuple(tasks)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=[None], help="PATH or LABEL=PATH (several for a sweep); default: embedded")
    parser.add_argument("--data", default="minilink")
    parser.add_argument("--size", type=int, default=600, help="MiniLINK test samples")
    parser.add_argument("--num-images", type=int, nargs="*", default=None, help="MiniLINK: evaluate at these fixed N")
    parser.add_argument("--tasks", nargs="*", default=None, choices=TASKS)
    parser.add_argument("--objects", type=int, default=None,
                        help="MiniLINK: this many objects per image (1: only the linked object, a read-out check)")
    parser.add_argument("--decoys", action="store_true", help="MiniLINK: a decoy colour and a decoy shape in every image")
    parser.add_argument("--images", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="MiniLINK: N drawn from MIN..MAX per sample (default: the generator's range)")
    parser.add_argument("--seed", type=int, default=SPLIT_SEEDS["test"], help="MiniLINK: the split's seed (default: test)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--adapter", default=None, help="SAM adapter weights for every --model: a file or a Hub reference")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="auto",
                        help="auto: 4-bit NF4 language model where bitsandbytes runs it (as the app); none: full precision")
    parser.add_argument("--preset", default="greedy")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-meteor", action="store_true")
    parser.add_argument("--out", default="runs/eval")
    parser.add_argument("--linked-attention", type=int, default=0, metavar="SAMPLES",
                        help="also report the attention share on the linked object over this many group samples")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    all_rows, all_predictions, attention = [], {}, {}
    for spec in args.model:
        label, _, path = (spec or "embedded").rpartition("=") if spec and "=" in spec else ("", "", spec)
        loaded = load_sam(path, args.adapter, quantization=args.quantization)
        precision = loaded.info.precision
        for num_images in args.num_images or [None]:
            dataset = open_eval_dataset(args.data, args.size, num_images, args.objects, args.decoys, args.seed, args.images)
            dataset = only_tasks(dataset, args.tasks)
            start = time.perf_counter()
            predictions = predict(loaded, dataset, args.modes, args.batch_size, args.preset, max_new_tokens=args.max_new_tokens)
            seconds = time.perf_counter() - start
            name = " ".join(x for x in (label or (path or "embedded"), f"N={num_images}" if num_images else "") if x)
            rows = summarise(predictions, args.modes, meteor=not args.no_meteor)
            for row in rows:
                row["model"], row["seconds"] = name, seconds
            all_rows += rows
            all_predictions[name] = [p.__dict__ for p in predictions]
        if args.linked_attention:
            attention[label or path or "embedded"] = linked_attention_share(
                loaded, args.linked_attention, config=eval_config(objects=args.objects, decoys=args.decoys))
    command = "python -m sam_core.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_results(out, all_rows, all_predictions, command, args.preset, args.max_new_tokens, attention, precision))


RESULT_FILES = ("predictions.json", "predictions.csv", "results.json", "results.csv", "results.md", "results.png")


def write_results(out: Path, rows: list[dict], predictions: dict[str, list[dict]], command: str, preset: str,
                  max_new_tokens: int, attention: dict | None = None, precision: str | None = None) -> str:
    """Write RESULT_FILES (and linked_attention.json) to `out`; returns the markdown table. The CLI and the app's
    dataset tab both write through here, so their files are interchangeable."""
    table = markdown_table(rows)
    if attention:
        table += "\n\nShare of the last Q-Former layer's attention on the linked object (group captioning test samples):\n\n"
        table += "| model | SAM | baseline |\n|---|---|---|\n"
        table += "\n".join(f"| {name} | {100 * a['sam']:.1f}% | {100 * a['baseline']:.1f}% |" for name, a in attention.items())
        (out / "linked_attention.json").write_text(json.dumps(attention, indent=1))
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    prediction_rows = [
        {"model": name, **{k: v for k, v in p.items() if k != "answers"}, **{f"answer_{m}": a for m, a in p["answers"].items()}}
        for name, items in predictions.items() for p in items
    ]
    write_csv(out / "predictions.csv", prediction_rows)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    write_csv(out / "results.csv", [flat_row(row) for row in rows])
    precision = f"; {precision}" if precision else ""
    (out / "results.md").write_text(f"{table}\n\nMade by `{command}` (decoding: {preset}, max {max_new_tokens} new tokens{precision}).\n")
    plot(rows, out / "results.png")
    return table


def flat_row(row: dict) -> dict:
    """A results row for a CSV: intervals and ratios split into their own columns."""
    flat = {}
    for key, value in row.items():
        if key.endswith("_ci"):
            flat[f"{key}_low"], flat[f"{key}_high"] = value
        elif key == "cider_ratio":
            flat["cider_ratio"], flat["cider_ratio_low"], flat["cider_ratio_high"] = value or (None, None, None)
        else:
            flat[key] = value
    return flat


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows with possibly different keys, as one CSV (the union of their columns, in first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
