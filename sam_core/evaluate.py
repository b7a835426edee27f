"""Evaluation: SAM next to its baselines on the same samples, with the authors' metrics and task accuracy.

    python -m sam_core.evaluate --model checkpoints/minilink --control runs/recipe/control --size 600
    python -m sam_core.evaluate --model checkpoints/minilink --seeds 2 101 102 103     # test split + three more
    python -m sam_core.evaluate --shortcuts --seeds 2                                  # the no-binding rules only
    python -m sam_core.evaluate --model k1=runs/k1/sam k2=runs/k2/sam --num-images 2 3 4 5 6 --tasks group

Rows per task: SAM (guidance on), `baseline` (the same checkpoint with guidance off), `control` (with --control:
another checkpoint, read with guidance off: the step-matched baseline that trained as long as SAM on the same
data), and on MiniLINK the no-binding shortcut rules (`sam_core/shortcuts.py`). Every row but SAM's carries SAM's
CIDEr divided by its own and SAM's accuracy minus its own, with paired 95% bootstrap intervals.
Writes predictions.json/.csv, results.json/.csv, results.md and results.png to --out and prints the markdown table
(with --linked-attention, also linked_attention.json: how much of the extraction's attention lands on the linked
object, SAM next to the baseline).
`--data` is "minilink" (generated from its seed: 1 is the dev split, 2 the held-out test split, 0 the train split;
any other seed is a fresh split) or an annotations.json in the authors' schema (records may carry "task" and
"linked" for accuracy).
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
    read_items, shared_attributes,
)
from .generation import generation_kwargs
from .loading import QUANTIZATIONS, LoadedSam, load_sam
from .metrics import (
    bootstrap_interval, normalize_answer, paired_bootstrap_difference, paired_bootstrap_ratio, score_captions,
)
from .modeling import SamVisualTokens
from .shortcuts import answers as rule_answers
from .shortcuts import shortcut_rules
from .train import batch_indices

MODES = ("sam", "baseline")
CONTROL = "control"  # the step-matched baseline checkpoint, read with guidance off
ROW_ORDER = ("sam", CONTROL, "baseline")


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
    return is_correct(prediction, prediction.answers[mode])


def is_correct(prediction: Prediction, answer: str) -> bool:
    """Group captioning and storytelling: the answer names the linked object; a question: the answer is the
    reference (after the authors' normalisation)."""
    if prediction.task == "question":
        return normalize_answer(answer) == normalize_answer(prediction.reference)
    return names_linked_object(answer, prediction.linked)


def expected_scores(subset: list[Prediction], candidates: list[list[str]]) -> dict[str, list[float]]:
    """Per-sample ROUGE-L, CIDEr and accuracy of a rule that answers one of `candidates[i]` at random: the mean
    over its candidates. Each draw is scored against the same references, so CIDEr's document frequencies are
    those the models' rows get."""
    draws = max(len(c) for c in candidates)
    references = [p.reference for p in subset]
    totals = {"rouge_l": [0.0] * len(subset), "cider": [0.0] * len(subset)}
    for draw in range(draws):
        texts = [c[min(draw, len(c) - 1)] for c in candidates]
        scores = score_captions(texts, references, meteor=False).per_sample
        for metric, values in totals.items():
            for i, (value, c) in enumerate(zip(scores[metric], candidates)):
                values[i] += value / len(c) if draw < len(c) else 0.0
    totals["accuracy"] = [100.0 * sum(is_correct(p, text) for text in c) / len(c) for p, c in zip(subset, candidates)]
    return totals


def summarise(predictions: list[Prediction], modes=MODES, meteor: bool = True,
              shortcuts: dict[str, dict[str, list[str]]] | None = None) -> list[dict]:
    """One row per (task, mode): n, BLEU-4, ROUGE-L, CIDEr, METEOR, accuracy (all ×100), with 95% intervals; then
    one row per shortcut rule ({rule: {sample id: its equally likely answers}}), scored in expectation. Every row
    but SAM's gets SAM's CIDEr ÷ its own (`sam_cider_ratio`) and SAM's accuracy − its own in points
    (`sam_accuracy_gain`), paired bootstrap intervals (None where the ratio is undefined)."""
    rows = []
    for task in sorted({p.task for p in predictions}, key=lambda t: (TASKS + (t,)).index(t)):
        subset = [p for p in predictions if p.task == task]
        per_sample, task_rows = {}, []
        for mode in sorted(modes, key=lambda m: ROW_ORDER.index(m) if m in ROW_ORDER else len(ROW_ORDER)):
            scores = score_captions([p.answers[mode] for p in subset], [p.reference for p in subset], meteor=meteor)
            row = {"task": task, "mode": mode, **scores.to_dict()}
            per_sample[mode] = {"cider": scores.per_sample["cider"]}
            if all(p.linked for p in subset):
                per_sample[mode]["accuracy"] = [100.0 * answer_is_correct(p, mode) for p in subset]
            task_rows.append(row)
        for rule, answers in (shortcuts or {}).items():
            expected = expected_scores(subset, [answers[p.id] for p in subset])
            row = {"task": task, "mode": f"rule: {rule}", "n": len(subset), "bleu4": None,
                   "rouge_l": sum(expected["rouge_l"]) / len(subset), "cider": sum(expected["cider"]) / len(subset), "meteor": None}
            per_sample[row["mode"]] = {"cider": expected["cider"], "accuracy": expected["accuracy"]}
            task_rows.append(row)
        for row in task_rows:
            mine = per_sample[row["mode"]]
            row["cider_ci"] = bootstrap_interval(mine["cider"])
            if "accuracy" in mine:
                row["accuracy"] = sum(mine["accuracy"]) / len(mine["accuracy"])
                row["accuracy_ci"] = bootstrap_interval(mine["accuracy"])
            if "sam" in per_sample and row["mode"] != "sam":
                try:
                    row["sam_cider_ratio"] = paired_bootstrap_ratio(per_sample["sam"]["cider"], mine["cider"])
                except ValueError:  # this row scores 0 (in some resamples): no finite ratio
                    row["sam_cider_ratio"] = None
                if "accuracy" in mine and "accuracy" in per_sample["sam"]:
                    row["sam_accuracy_gain"] = paired_bootstrap_difference(per_sample["sam"]["accuracy"], mine["accuracy"])
        rows += task_rows
    return rows


def summarise_split(predictions: list[Prediction], dataset, modes=MODES, meteor: bool = True,
                    rule_sets: dict | None = None) -> list[dict]:
    """`summarise`, plus on MiniLINK a row per shortcut rule and (version 2) what each mode names. `rule_sets`: the
    fitted rules per setting, reused across calls."""
    if not isinstance(dataset, MiniLink):
        return summarise(predictions, modes, meteor=meteor)
    rule_sets = {} if rule_sets is None else rule_sets
    setting = replace(dataset.config, tasks=TASKS)  # the rules are fitted once per setting
    rule_sets[setting] = rule_sets.get(setting) or shortcut_rules(setting)
    rows = summarise(predictions, modes, meteor=meteor, shortcuts=shortcut_answers(dataset, rule_sets[setting]))
    named = named_pairs(predictions, dataset, modes) if dataset.config.version == 2 else {}
    for row in rows:
        if (row["task"], row["mode"]) in named:
            row["named"] = named[(row["task"], row["mode"])]
    return rows


def shortcut_answers(dataset: MiniLink, rules: dict) -> dict[str, dict[str, list[str]]]:
    """Every no-binding rule's equally likely answers for every sample of a MiniLINK split."""
    samples = [dataset[index] for index in range(len(dataset))]
    return {name: {s.id: rule_answers(s, rule(s)) for s in samples} for name, rule in rules.items()}


CARD_SUBSET = {"size": 48, "tasks": ("group",)}  # the fixed subset the shipped checkpoint's card records


def subset_accuracy(loaded: LoadedSam, size: int = CARD_SUBSET["size"], tasks=CARD_SUBSET["tasks"],
                    decoys: bool = False, version: int = MiniLinkConfig.version) -> dict[str, float]:
    """Task accuracy (%) per mode on the first `size` MiniLINK test samples of `tasks`: small enough for a test
    to check that a checkpoint still scores what its model card says."""
    dataset = MiniLink(SPLIT_SEEDS["test"], size, MiniLinkConfig(tasks=tuple(tasks), decoys=decoys, version=version))
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
    header = ("| model | task | mode | n | BLEU-4 | ROUGE-L | CIDEr (95% CI) | METEOR | accuracy % (95% CI) "
              "| CIDEr SAM ÷ this (95% CI) | accuracy SAM − this, points (95% CI) |")
    lines = [header, "|" + "---|" * 11]

    def number(value, digits=1):
        return "–" if value is None else f"{value:.{digits}f}"

    def interval(triple, unit="", digits=2):
        value, low, high = triple
        return f"{value:+.1f} ({low:+.1f} to {high:+.1f})" if unit == "points" else f"{value:.{digits}f}× ({low:.{digits}f}–{high:.{digits}f})"

    for r in rows:
        accuracy = f"{r['accuracy']:.1f} ({r['accuracy_ci'][0]:.1f}–{r['accuracy_ci'][1]:.1f})" if "accuracy" in r else "–"
        ratio = "–"
        if "sam_cider_ratio" in r:
            ratio = interval(r["sam_cider_ratio"]) if r["sam_cider_ratio"] else "undefined (CIDEr 0 in some bootstrap resamples)"
        gain = interval(r["sam_accuracy_gain"], "points") if "sam_accuracy_gain" in r else "–"
        lines.append(
            f"| {r.get('model', label)} | {r['task']} | {r['mode']} | {r['n']} | {number(r['bleu4'])} | {r['rouge_l']:.1f} "
            f"| {r['cider']:.1f} ({r['cider_ci'][0]:.1f}–{r['cider_ci'][1]:.1f}) | {number(r.get('meteor'))} | {accuracy} "
            f"| {ratio} | {gain} |"
        )
    return "\n".join(lines)


PAIRS = ("linked", "linked colour + decoy shape", "decoy colour + linked shape", "decoy pair", "another colour or shape")


def named_pairs(predictions: list[Prediction], dataset: MiniLink, modes) -> dict[tuple[str, str], dict[str, float]]:
    """What each mode names on version-2 group captioning and storytelling, per (task, mode): the share (%) of
    answers naming the linked colour and shape, one of them with the other's decoy, the decoy pair, or anything else.
    A model that reads only bags spreads over the first four; one that binds names the linked pair."""
    counts: dict[tuple[str, str], list[str]] = {}
    for prediction in predictions:
        if prediction.task not in ("group", "story"):
            continue
        sample = dataset[int(prediction.id.rsplit("-", 1)[1])]
        colour, shape = sample.linked.split()
        colours, shapes = shared_attributes(sample.scenes)
        decoy_colour, decoy_shape = next(iter(colours - {colour}), None), next(iter(shapes - {shape}), None)
        for mode in modes:
            words = normalize_answer(prediction.answers[mode]).split()
            said_colour = "linked" if colour in words else "decoy" if decoy_colour in words else None
            said_shape = "linked" if shape in words else "decoy" if decoy_shape in words else None
            pair = {("linked", "linked"): PAIRS[0], ("linked", "decoy"): PAIRS[1], ("decoy", "linked"): PAIRS[2],
                    ("decoy", "decoy"): PAIRS[3]}.get((said_colour, said_shape), PAIRS[4])
            counts.setdefault((prediction.task, mode), []).append(pair)
    return {key: {pair: 100.0 * named.count(pair) / len(named) for pair in PAIRS} for key, named in counts.items()}


def pairs_table(rows: list[dict]) -> str:
    lines = ["| model | task | mode | n | " + " | ".join(f"{pair} %" for pair in PAIRS) + " |", "|" + "---|" * (4 + len(PAIRS))]
    for r in rows:
        if "named" in r:
            lines.append(f"| {r['model']} | {r['task']} | {r['mode']} | {r['n']} | " + " | ".join(f"{r['named'][p]:.1f}" for p in PAIRS) + " |")
    return "\n".join(lines)


def headline_table(rows: list[dict]) -> str:
    """SAM against its strongest fair baseline, per split and task: task accuracy of SAM, the step-matched control,
    the same checkpoint with guidance off and the best no-binding rule, SAM's accuracy gain over the control and
    its CIDEr ratios over the control and over guidance off (paired 95% intervals)."""
    lines = ["| split | task | n | accuracy % SAM / control / guidance off / best no-binding rule (chance) "
             "| SAM − control, points (95% CI) | CIDEr SAM ÷ control (95% CI) | CIDEr SAM ÷ guidance off (95% CI) |",
             "|" + "---|" * 7]
    for model, task in dict.fromkeys((r["model"], r["task"]) for r in rows):
        group = {r["mode"]: r for r in rows if (r["model"], r["task"]) == (model, task)}
        if "sam" not in group or "accuracy" not in group["sam"]:
            continue
        rules = [r for mode, r in group.items() if mode.startswith("rule: no binding")]
        chance = next((r["accuracy"] for mode, r in group.items() if mode.startswith("rule: no binding: chance")), None)

        def accuracy(mode):
            return f"{group[mode]['accuracy']:.1f}" if mode in group else "–"

        def ratio(mode):
            value = group.get(mode, {}).get("sam_cider_ratio")
            return f"{value[0]:.2f}× ({value[1]:.2f}–{value[2]:.2f})" if value else "–"

        gain = group.get(CONTROL, {}).get("sam_accuracy_gain")
        best_rule = f"{max(r['accuracy'] for r in rules):.1f}" if rules else "–"
        chance_text = f" ({chance:.1f})" if chance is not None else ""
        lines.append(
            f"| {model} | {task} | {group['sam']['n']} | {accuracy('sam')} / {accuracy(CONTROL)} / {accuracy('baseline')} / "
            f"{best_rule}{chance_text} | {f'{gain[0]:+.1f} ({gain[1]:+.1f} to {gain[2]:+.1f})' if gain else '–'} "
            f"| {ratio(CONTROL)} | {ratio('baseline')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """CIDEr and accuracy per task (and per model/N when sweeping), SAM next to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["mode"] in ROW_ORDER]  # the models; the rules are in the table
    groups = list(dict.fromkeys((r.get("model", ""), r["task"]) for r in rows))
    metrics = [m for m in ("cider", "accuracy") if any(m in r for r in rows)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(max(5, 1.3 * len(groups)) * len(metrics), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        shown = [(m, c) for m, c in (("baseline", "#9e9e9e"), (CONTROL, "#e08a2c"), ("sam", "#1f77b4")) if any(r["mode"] == m for r in rows)]
        width = 0.8 / len(shown)
        for offset, (mode, colour) in enumerate(shown):
            values = [next((r.get(metric, 0) for r in rows if (r.get("model", ""), r["task"]) == g and r["mode"] == mode), 0) for g in groups]
            axis.bar([i + (offset - (len(shown) - 1) / 2) * width for i in range(len(groups))], values, width=width, color=colour, label=mode)
        axis.set_xticks(range(len(groups)), [f"{m}\n{t}".strip() for m, t in groups], fontsize=8)
        axis.set_title("CIDEr" if metric == "cider" else "task accuracy (%)")
        axis.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def eval_config(num_images: int | None = None, objects: int | None = None, decoys: bool = False,
                images: tuple[int, int] | None = None, version: int = MiniLinkConfig.version) -> MiniLinkConfig:
    """The MiniLINK setting of an evaluation: the version, optionally a fixed N (or N drawn from an `images` range),
    a fixed number of objects per image, version 1's decoys."""
    config = MiniLinkConfig(decoys=decoys, version=version)
    if images is not None:
        config = replace(config, min_images=images[0], max_images=images[1])
    if num_images is not None:
        config = replace(config, min_images=num_images, max_images=num_images)
    if objects is not None:
        config = replace(config, min_objects=objects, max_objects=objects)
    return config


def open_eval_dataset(data: str, size: int, num_images: int | None, objects: int | None = None, decoys: bool = False,
                      version: int = MiniLinkConfig.version, seed: int = SPLIT_SEEDS["test"],
                      images: tuple[int, int] | None = None):
    """A MiniLINK split (the test split unless `seed` says otherwise) in the setting `eval_config` builds, or an
    annotations file."""
    if data == "minilink":
        return MiniLink(seed, size, eval_config(num_images, objects, decoys, images, version))
    return AnnotationDataset(data)


def only_tasks(dataset, tasks):
    """MiniLINK restricted to some tasks (regenerates the split with those task weights, same seed)."""
    if tasks is None or not isinstance(dataset, MiniLink):
        return dataset
    return MiniLink(dataset.seed, dataset.size, replace(dataset.config, tasks=tuple(tasks)))


def split_name(seed: int) -> str:
    names = {value: key for key, value in SPLIT_SEEDS.items()}
    return f"seed {seed}" + (f" ({names[seed]})" if seed in names else "")


def rows_label(model: str, seed: int | None = None, num_images: int | None = None, show_seed: bool = False) -> str:
    """The `model` column of a run's rows: the model, a fixed N and, when asked or not the test split, the split."""
    show_seed = seed is not None and (show_seed or seed != SPLIT_SEEDS["test"])
    return " ".join(x for x in (model, f"N={num_images}" if num_images else "", split_name(seed) if show_seed else "") if x)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=[None], help="PATH or LABEL=PATH (several for a sweep); default: embedded")
    parser.add_argument("--control", default=None,
                        help="a step-matched baseline checkpoint, read with guidance off, as the 'control' rows (one --model)")
    parser.add_argument("--shortcuts", action="store_true", help="MiniLINK: only the no-binding shortcut rules, no model")
    parser.add_argument("--data", default="minilink")
    parser.add_argument("--seeds", type=int, nargs="+", default=[SPLIT_SEEDS["test"]],
                        help="MiniLINK splits: 2 the held-out test split (default), 1 the dev split, others fresh")
    parser.add_argument("--size", type=int, default=600, help="MiniLINK samples per split")
    parser.add_argument("--version", type=int, default=MiniLinkConfig.version, choices=(1, 2),
                        help="MiniLINK version: 2 balanced decoys (default), 1 the earlier benchmark")
    parser.add_argument("--num-images", type=int, nargs="*", default=None, help="MiniLINK: evaluate at these fixed N")
    parser.add_argument("--tasks", nargs="*", default=None, choices=TASKS)
    parser.add_argument("--objects", type=int, default=None,
                        help="MiniLINK: this many objects per image (1, with --version 1: only the linked object, a read-out check)")
    parser.add_argument("--decoys", action="store_true", help="MiniLINK version 1: a decoy colour and a decoy shape in every image")
    parser.add_argument("--images", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="MiniLINK: N drawn from MIN..MAX per sample (default: the generator's range)")
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
    if args.control and len(args.model) > 1:
        parser.error("--control compares with one --model")
    if args.shortcuts and args.data != "minilink":
        parser.error("--shortcuts needs MiniLINK's scenes (--data minilink)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    models = [] if args.shortcuts else [parse_model(spec, args.adapter, args.quantization) for spec in args.model]
    control = load_sam(args.control, quantization=args.quantization) if args.control else None
    all_rows, all_predictions, attention, rule_sets = [], {}, {}, {}
    for seed in args.seeds if args.data == "minilink" else [None]:
        for num_images in args.num_images or [None]:
            dataset = only_tasks(open_eval_dataset(args.data, args.size, num_images, args.objects, args.decoys, args.version,
                                                   seed, args.images), args.tasks)
            for label, loaded in models or [("rules", None)]:
                name = rows_label(label, seed, num_images, show_seed=len(args.seeds) > 1)
                start = time.perf_counter()
                if loaded is None:
                    predictions, modes = references_only(dataset), ()
                else:
                    predictions, modes = model_predictions(loaded, control, dataset, args)
                seconds = time.perf_counter() - start
                rows = summarise_split(predictions, dataset, modes, meteor=not args.no_meteor, rule_sets=rule_sets)
                for row in rows:
                    row["model"], row["seconds"] = name, seconds
                all_rows += rows
                all_predictions[name] = [p.__dict__ for p in predictions]
    for label, loaded in models:
        if args.linked_attention:
            attention[label] = linked_attention_share(
                loaded, args.linked_attention, config=eval_config(objects=args.objects, decoys=args.decoys, version=args.version))
    table = results_table(all_rows, args.version if rule_sets else None)
    if attention:
        table += "\n\nShare of the last Q-Former layer's attention on the linked object (group captioning test samples):\n\n"
        table += "| model | SAM | baseline |\n|---|---|---|\n"
        table += "\n".join(f"| {name} | {100 * a['sam']:.1f}% | {100 * a['baseline']:.1f}% |" for name, a in attention.items())
        (out / "linked_attention.json").write_text(json.dumps(attention, indent=1))
    command = "python -m sam_core.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    precision = models[-1][1].info.precision if models else None
    print(write_results(out, all_rows, all_predictions, command, args.preset, args.max_new_tokens, table, precision,
                        with_plot=bool(models)))


def results_table(rows: list[dict], version: int | None = None) -> str:
    """The markdown of every row: the headline first where a control was evaluated, what each mode names (MiniLINK
    version 2) and, with the MiniLINK `version` the rules ran on, how to read the rules' rows."""
    table = markdown_table(rows)
    if any(row["mode"] == CONTROL for row in rows):
        table = headline_table(rows) + "\n\n" + table
    if any("named" in row for row in rows):
        table += "\n\nWhat each mode names, of the colours and the shapes that every image holds:\n\n" + pairs_table(rows)
    if version is not None:
        chance = "25% on group captioning and storytelling (one of the 2 × 2 shared colour-shape pairs), 50% on questions" \
            if version == 2 else "given per task by the 'chance' rule's row"
        table += (f"\n\nRules (`sam_core/shortcuts.py`), scored in expectation over their ties: 'no binding' rules see only each "
                  "image's bag of colours and bag of shapes; 'binds by place' rules also see where each colour and each shape "
                  f"sits, so they can pair a colour with the shape in its cell. Chance is {chance}. "
                  "BLEU-4 and METEOR are not computed for rules.")
    return table


RESULT_FILES = ("predictions.json", "predictions.csv", "results.json", "results.csv", "results.md", "results.png")


def write_results(out: Path, rows: list[dict], predictions: dict[str, list[dict]], command: str, preset: str,
                  max_new_tokens: int, table: str | None = None, precision: str | None = None, with_plot: bool = True) -> str:
    """Write RESULT_FILES to `out`; returns the markdown table (`table`: one already made, with its notes). The CLI
    and the app's dataset tab both write through here, so their files are interchangeable."""
    table = table or markdown_table(rows)
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
    if with_plot:
        plot(rows, out / "results.png")
    return table


def flat_row(row: dict) -> dict:
    """A results row for a CSV: intervals and ratios split into their own columns."""
    flat = {}
    for key, value in row.items():
        if key.endswith("_ci"):
            flat[f"{key}_low"], flat[f"{key}_high"] = value
        elif key in ("sam_cider_ratio", "sam_accuracy_gain"):
            flat[key], flat[f"{key}_low"], flat[f"{key}_high"] = value or (None, None, None)
        elif isinstance(value, dict):
            flat.update({f"{key}_{name}": item for name, item in value.items()})
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


def parse_model(spec: str | None, adapter: str | None = None, quantization: str = "auto") -> tuple[str, LoadedSam]:
    """(label, loaded model) of a --model argument: PATH, LABEL=PATH, or None for the embedded default."""
    label, _, path = spec.rpartition("=") if spec and "=" in spec else ("", "", spec)
    return label or path or "embedded", load_sam(path, adapter, quantization=quantization)


def model_predictions(loaded: LoadedSam, control: LoadedSam | None, dataset, args) -> tuple[list[Prediction], list[str]]:
    """The model's answers in every requested mode, plus the control checkpoint's guidance-off answers as 'control'."""
    settings = dict(batch_size=args.batch_size, preset=args.preset, max_new_tokens=args.max_new_tokens)
    predictions, modes = predict(loaded, dataset, args.modes, **settings), list(args.modes)
    if control is not None:
        for prediction, controlled in zip(predictions, predict(control, dataset, ("baseline",), **settings)):
            prediction.answers[CONTROL] = controlled.answers["baseline"]
        modes.append(CONTROL)
    return predictions, modes


def references_only(dataset) -> list[Prediction]:
    """Every sample with its reference and no model answer (for the shortcut rules alone)."""
    _, _, references, records = read_items(dataset, range(len(dataset)))
    return [Prediction(str(r["id"]), r.get("task", "all"), r.get("linked"), reference, {}) for reference, r in zip(references, records)]


if __name__ == "__main__":
    main()
