"""The "Evaluate a dataset" tab and the /evaluate API: SAM next to the baseline on every sample of a dataset
(MiniLINK generated on the fly, or an upload in the authors' schema), a per-sample browser, and the views that
show where guidance helps. The run is `sam_core.evaluation_run`'s, the same samples, metrics and files as
`python -m sam_core.evaluate`; it takes the model one batch at a time, so other people's requests interleave.

    tab = build_evaluation_tab(service)                 # inside a gr.Tab of the page
    connect_main_view(tab, pages=..., gallery=..., ...)  # "Open in the main view and explain"
"""

import json
import logging
import math
import re
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

from sam_core.data import TASKS, MiniLinkConfig
from sam_core.dataset_upload import DatasetUploadError, UploadLimits, uploaded_dataset
from sam_core.evaluate import write_csv
from sam_core.evaluation_run import (
    OUTCOMES,
    EvaluationOptions, EvaluationOutcome, MiniLinkSource, SampleResult, command, run_evaluation, write_outcome,
)
from sam_core.metrics import paired_bootstrap_ratio
from sam_core.processing import ImageLoadError, group_caption_prompt, storytelling_prompt
from sam_core.shortcuts import NO_BINDING

from .refusals import refusal
from .service import InputError, ResourceError, SamService, out_of_memory_answer, served_folder

if TYPE_CHECKING:
    from visualization.dataset_views import DatasetView

LOG = logging.getLogger("sam_studio")
SOURCES = [("MiniLINK, generated", "minilink"), ("Upload in the authors' schema", "upload")]
TASK_CHOICES = [("group captioning", "group"), ("storytelling", "story"), ("question", "question")]
ALL = "all"
CIDER_FILTERS = {"SAM higher CIDEr": 1, "baseline higher CIDEr": -1, "equal CIDEr": 0}
SORTS = ("SAM ahead first (CIDEr difference)", "baseline ahead first (CIDEr difference)", "dataset order")
THUMBNAILS = 48  # the browser's gallery shows this many of the filtered samples (the table lists them all)
VIEW_NAMES = ("by_images", "by_task", "by_alpha", "alignment")
UNDEFINED_RATIO = "undefined (baseline 0 in some resamples)"
INTRO = """### Where does SAM help on my data?
Run SAM and the baseline on every sample of a dataset, with the authors' metrics, then browse the samples and
see where guidance changes the answer. The run is the command line's (`python -m sam_core.evaluate`, printed
below the results): same samples, same numbers, same files. Other people's requests are served between batches."""
UPLOAD_HELP = """An **annotations JSON** in the authors' schema, a list of
`{"id", "img_list", "instruction", "output"}` (optional `"task"`, and `"linked"` for task accuracy), and a **zip of
its images** under the paths `img_list` names (at the zip's top or in one folder). On the command line,
`--data annotations.json` reads the images beside it: unpack the zip next to it. The browser keeps copies of the
images at most 448 pixels a side, and Explain runs on those."""


@dataclass
class EvaluationRecord:
    """A finished run, kept for browsing: its outcome, views, files and the folder that holds them."""

    outcome: EvaluationOutcome
    views: list["DatasetView"]
    folder: Path
    files: list[str]
    command: str
    table: str
    model_name: str


def remove_run(record: "EvaluationRecord | None") -> None:
    if record is not None:
        shutil.rmtree(record.folder, ignore_errors=True)


class CancelSwitches:
    """One cancel event per session (browser tab or API client), so a Cancel reaches that session's run only."""

    def __init__(self):
        self.lock, self.events = threading.Lock(), {}

    def start(self, session: str | None) -> threading.Event:
        event = threading.Event()
        if session is not None:
            with self.lock:
                self.events[session] = event
        return event

    def cancel(self, session: str | None) -> bool:
        with self.lock:
            event = self.events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str | None, event: threading.Event) -> None:
        with self.lock:
            if self.events.get(session) is event:
                del self.events[session]


@contextmanager
def model_turn(service: SamService):
    """The served model for one batch, under the lock every request takes."""
    with service.lock, out_of_memory_answer():
        service.ready()
        yield service.loaded


def minilink_source(size, min_images, max_images, objects, decoys, seed, tasks, settings) -> MiniLinkSource:
    try:
        numbers = [int(value) for value in (size, min_images, max_images, objects, seed)]
    except (TypeError, ValueError):
        raise InputError("The MiniLINK settings must be whole numbers.") from None
    size, min_images, max_images, objects, seed = numbers
    source = MiniLinkSource(size, min_images, max_images, objects or None, bool(decoys), seed,
                            tuple(task for task in TASKS if task in (tasks or [])))
    try:
        source.check(settings.max_eval_samples, settings.max_images)
    except ValueError as error:
        raise InputError(str(error)) from None
    return source


def evaluate(service: SamService, source_kind: str, minilink: tuple, annotations, images_zip, max_new_tokens,
             cancel: threading.Event, progress=None) -> EvaluationRecord:
    """One evaluation request: validate, run in batches, write the CLI's files and the views into a fresh folder (in
    Gradio's cache, which serves them and deletes them SAM_CACHE_TTL seconds later)."""
    from visualization.dataset_views import alignment_measure, dataset_views  # the analysis stack, on first use

    settings = service.settings
    if not 1 <= int(max_new_tokens) <= settings.max_new_tokens:
        raise InputError(f"Max new tokens must be between 1 and {settings.max_new_tokens}.")
    options = EvaluationOptions(max_new_tokens=int(max_new_tokens), time_budget=settings.eval_time_budget)
    folder = served_folder("sam-eval-")
    run = dict(options=options, turn=lambda: model_turn(service), cancel=cancel, progress=progress,
               measure=alignment_measure, image_dir=folder / "images")
    try:
        model_name = service.info["name"]
        if source_kind == "minilink":
            source = minilink_source(*minilink, settings)
            outcome, data_arguments = run_evaluation(source.open(), **run), source.arguments()
            model_name = source.label(model_name)
        elif source_kind == "upload":
            if not annotations or not images_zip:
                raise InputError("Upload both the annotations JSON and the zip of its images.")
            limits = UploadLimits(max_samples=settings.max_eval_samples, max_images_per_sample=settings.max_images)
            with uploaded_dataset(upload_file(annotations), upload_file(images_zip), limits) as dataset:
                outcome = run_evaluation(dataset, **run)
            data_arguments = ["--data", "annotations.json"]
        else:
            raise InputError(f"Unknown dataset source {source_kind!r}; choose minilink or upload.")
        line = command(data_arguments, options)
        table = metrics_table(outcome)
        views = dataset_views(outcome.samples)
        files = write_run_files(outcome, views, folder, model_name, line, options) if outcome.samples else []
        return EvaluationRecord(outcome, views, folder, files, line, table, model_name)
    except (DatasetUploadError, ImageLoadError) as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise InputError(str(error)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def upload_file(item) -> str:
    """A gr.File value (a path, or a dict with one) → its path."""
    return item.get("path") if isinstance(item, dict) else str(item)


def write_run_files(outcome: EvaluationOutcome, views: list["DatasetView"], folder: Path, model_name: str, line: str,
                    options: EvaluationOptions) -> list[str]:
    """The CLI's files (results/), every sample (samples.csv/json) and each view's data and figure (views/)."""
    from visualization.dataset_views import chart_png
    files = write_outcome(outcome, folder / "results", model_name, line, options)
    samples = [sample.to_dict() for sample in outcome.samples]
    (folder / "samples.json").write_text(json.dumps(samples, indent=1))
    write_csv(folder / "samples.csv", samples)
    files += [folder / "samples.json", folder / "samples.csv"]
    (folder / "views").mkdir()
    for view in views:
        stem = folder / "views" / view.name
        stem.with_suffix(".json").write_text(json.dumps({"title": view.title, "note": view.note, "rows": view.rows}, indent=1))
        write_csv(stem.with_suffix(".csv"), view.rows)
        stem.with_suffix(".png").write_bytes(chart_png(view.figure))
        files += [stem.with_suffix(suffix) for suffix in (".csv", ".json", ".png")]
    return [str(path) for path in files]


# ------------------------------------------------------------------------------------------- what the page shows


def paired_ratio(sam: list[float], baseline: list[float]) -> tuple[float, float, float] | None:
    try:
        return paired_bootstrap_ratio(sam, baseline)
    except ValueError:  # the baseline's mean is 0 in some resamples
        return None


def ratio_text(ratio: tuple[float, float, float] | None) -> str:
    return UNDEFINED_RATIO if ratio is None else "{:.2f}× ({:.2f}–{:.2f})".format(*ratio)


def metrics_table(outcome: EvaluationOutcome) -> str:
    """Per task, a table of metrics: SAM, baseline and the paired SAM ÷ baseline ratio with its 95% interval (CIDEr
    and accuracy, means of per-sample scores; corpus BLEU-4 and ROUGE-L have none here)."""
    if not outcome.rows:
        return "No sample finished, so there are no metrics."
    parts = []
    for task in dict.fromkeys(row["task"] for row in outcome.rows):
        sam, baseline = (next(r for r in outcome.rows if r["task"] == task and r["mode"] == mode) for mode in ("sam", "baseline"))
        rules = [r for r in outcome.rows if r["task"] == task and r["mode"].startswith(f"rule: {NO_BINDING}")]
        chosen = [s for s in outcome.samples if s.prediction.task == task]
        entries = [("BLEU-4", f"{sam['bleu4']:.1f}", f"{baseline['bleu4']:.1f}", "–"),
                   ("ROUGE-L", f"{sam['rouge_l']:.1f}", f"{baseline['rouge_l']:.1f}", "–"),
                   ("CIDEr", interval_text(sam, "cider"), interval_text(baseline, "cider"), ratio_text(baseline.get("sam_cider_ratio")))]
        if "accuracy" in sam:
            ratio = paired_ratio([100.0 * s.correct["sam"] for s in chosen], [100.0 * s.correct["baseline"] for s in chosen])
            entries.append(("accuracy %", interval_text(sam, "accuracy"), interval_text(baseline, "accuracy"), ratio_text(ratio)))
        lines = [f"**{task}** · n = {sam['n']}", "", "| metric | SAM | baseline | SAM ÷ baseline (95% CI) |", "|---|---|---|---|"]
        if rules and "accuracy" in sam:
            best = max(rules, key=lambda r: r["accuracy"])
            entries.append((f"best no-binding rule's accuracy % ({best['mode'].split(': ', 2)[-1]})", "–", "–",
                            f"{best['accuracy']:.1f} (SAM {sam['accuracy'] - best['accuracy']:+.1f} points)"))
        parts.append("\n".join(lines + [f"| {name} | {a} | {b} | {r} |" for name, a, b, r in entries]))
    return "\n\n".join(parts)


def interval_text(row: dict, metric: str) -> str:
    low, high = row[f"{metric}_ci"]
    return f"{row[metric]:.1f} ({low:.1f}–{high:.1f})"


def status_text(record: EvaluationRecord) -> str:
    outcome = record.outcome
    text = f"**{outcome.summary()}**"
    if outcome.samples:
        text += f"\n\nThe same run on the command line: `{record.command}`"
    return text


def matches(sample: SampleResult, outcome: str, task: str, num_images: str) -> bool:
    if task != ALL and sample.prediction.task != task:
        return False
    if num_images != ALL and str(sample.prediction.num_images) != num_images:
        return False
    if outcome in CIDER_FILTERS:
        difference = sample.cider_difference
        return (difference > 0) - (difference < 0) == CIDER_FILTERS[outcome]
    return outcome == ALL or OUTCOMES.get(sample.outcome) == outcome


def browse(record: EvaluationRecord | None, outcome: str, task: str, num_images: str, order: str) -> list[SampleResult]:
    """The samples that pass the filters, in the chosen order."""
    if record is None:
        return []
    chosen = [s for s in record.outcome.samples if matches(s, outcome, task, num_images)]
    if order == SORTS[2]:
        return sorted(chosen, key=lambda s: s.index)
    return sorted(chosen, key=lambda s: (-s.cider_difference if order == SORTS[0] else s.cider_difference, s.index))


def thumbnail(sample: SampleResult, folder: Path, side: int = 64, gap: int = 3) -> str:
    """A sample's images in a square-ish grid (cached in the run's folder), so every gallery cell is filled."""
    path = folder / "thumbnails" / f"{sample.index}.png"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        columns = math.ceil(math.sqrt(len(sample.image_paths)))
        rows = math.ceil(len(sample.image_paths) / columns)
        sheet = Image.new("RGB", (columns * (side + gap) - gap, rows * (side + gap) - gap), "white")
        for position, image_path in enumerate(sample.image_paths):
            with Image.open(image_path) as image:
                picture = image.convert("RGB")
            picture.thumbnail((side, side))
            row, column = divmod(position, columns)
            sheet.paste(picture, (column * (side + gap) + (side - picture.width) // 2, row * (side + gap) + (side - picture.height) // 2))
        sheet.save(path)
    return str(path)


def outcome_label(sample: SampleResult) -> str:
    return OUTCOMES.get(sample.outcome, "accuracy not defined")


def browser_rows(samples: list[SampleResult]) -> list[list]:
    return [[s.index, s.prediction.id, s.prediction.task, s.prediction.num_images, outcome_label(s),
             round(s.cider_difference, 1), s.prediction.reference, s.prediction.answers["sam"], s.prediction.answers["baseline"]]
            for s in samples]


BROWSER_HEADERS = ["#", "id", "task", "N", "who is right", "CIDEr SAM − baseline", "reference", "SAM", "baseline"]


def sample_markdown(sample: SampleResult) -> str:
    lines = [f"**Sample {sample.prediction.id}** · {sample.prediction.task} · N={sample.prediction.num_images} · "
             f"{outcome_label(sample)}",
             f"CIDEr: SAM {sample.cider['sam']:.1f}, baseline {sample.cider['baseline']:.1f} "
             f"(SAM − baseline {sample.cider_difference:+.1f})"]
    if sample.alpha_lift is not None:
        lines.append(f"SAM's α on the linked object ({sample.prediction.linked}): {100 * sample.linked_alpha:.1f}% of the "
                     f"weight, {sample.alpha_lift:.2f}× chance")
    if "alignment_sam" in sample.measures:
        lines.append(f"Alignment of the visual tokens: SAM {sample.measures['alignment_sam']:.3f}, "
                     f"baseline {sample.measures['alignment_baseline']:.3f}")
    return "\n\n".join(lines)


def main_view_inputs(prompt: str, num_images: int) -> tuple[str, str, list[str]]:
    """(task, question, captions) that make the main view build exactly `prompt` for `num_images` images."""
    if prompt == group_caption_prompt(num_images):
        return "Group captioning", "", []
    captions = [text for _, text in re.findall(r"\{image#(\d+)\}Caption#\1:(.*?)(?=\{image#|$)", prompt)][:-1]
    if num_images >= 2 and len(captions) == num_images - 1 and all(c.strip() for c in captions) \
            and storytelling_prompt(captions) == prompt:
        return "Storytelling", "", captions
    return "Free question", prompt, []


def api_json(record: EvaluationRecord) -> str:
    outcome = record.outcome
    return json.dumps({
        "status": outcome.status, "summary": outcome.summary(), "samples_done": len(outcome.samples), "total": outcome.total,
        "seconds": outcome.seconds, "command": record.command, "rows": outcome.result_rows(record.model_name), "table": record.table,
        "samples": [sample.to_dict() for sample in outcome.samples],
        "views": {view.name: {"title": view.title, "rows": view.rows} for view in record.views},
    })


# ------------------------------------------------------------------------------------------------- the panel


@dataclass
class EvaluationTab:
    """The components the rest of the page connects to."""

    run_state: gr.State
    selected: gr.State
    open_button: gr.Button


def build_evaluation_tab(service: SamService) -> EvaluationTab:
    """The tab's components and callbacks (call inside a gr.Tab), and the /evaluate and /cancel_evaluation API."""
    settings = service.settings
    switches = CancelSwitches()
    max_images = settings.max_images
    low_images, high_images = min(MiniLinkConfig.min_images, max_images), min(MiniLinkConfig.max_images, max_images)
    object_range = f"{MiniLinkConfig.min_objects}–{MiniLinkConfig.max_objects}"

    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=4, min_width=300):
            source = gr.Radio(SOURCES, value="minilink", label="Dataset")
            with gr.Group(visible=True) as minilink_box:
                size = gr.Slider(1, settings.max_eval_samples, value=min(100, settings.max_eval_samples), step=1,
                                 label="Samples", info=f"at most {settings.max_eval_samples} (SAM_MAX_EVAL_SAMPLES)")
                with gr.Row():
                    min_images = gr.Slider(2, max(max_images, 3), value=low_images, step=1, label="Fewest images per sample")
                    max_images_slider = gr.Slider(2, max(max_images, 3), value=high_images, step=1, label="Most images per sample")
                objects = gr.Dropdown([(f"{object_range} (the generator's range)", 0)] + [(str(k), k) for k in range(1, 10)],
                                      value=0, label="Objects per image")
                decoys = gr.Checkbox(False, label="Version 1 with decoys (the earlier benchmark; version 2, the default, always "
                                     "holds balanced decoys)")
                seed = gr.Number(2, precision=0, label="Seed", info="2 is the held-out test split")
                tasks = gr.CheckboxGroup(TASK_CHOICES, value=list(TASKS), label="Tasks")
            with gr.Group(visible=False) as upload_box:
                gr.Markdown(UPLOAD_HELP)
                annotations = gr.File(label="Annotations (JSON)", file_types=[".json"], type="filepath")
                images_zip = gr.File(label="Images (zip)", file_types=[".zip"], type="filepath")
            max_new_tokens = gr.Slider(1, max(settings.max_new_tokens, 2), value=min(24, settings.max_new_tokens), step=1,
                                       label="Max new tokens per answer (greedy decoding, as the command line)")
            with gr.Row():
                run_button = gr.Button("Run the evaluation", variant="primary")
                cancel_button = gr.Button("Cancel", variant="stop")
        with gr.Column(scale=6, min_width=300):
            status = gr.Markdown(elem_id="evaluation-status")
            table = gr.Markdown(elem_id="evaluation-table")
            plot = gr.Image(label="CIDEr and accuracy per task (the command line's results.png)", type="filepath",
                            interactive=False, height=260)

    run_state = gr.State(None, delete_callback=remove_run)
    order_state = gr.State([])
    selected = gr.State(None)
    with gr.Tabs():
        with gr.Tab("Samples"):
            with gr.Row():
                outcome_filter = gr.Dropdown([ALL, *OUTCOMES.values(), *CIDER_FILTERS], value=ALL, label="Who is right")
                task_filter = gr.Dropdown([ALL], value=ALL, label="Task")
                images_filter = gr.Dropdown([ALL], value=ALL, label="Images (N)")
                order = gr.Dropdown(list(SORTS), value=SORTS[0], label="Order")
            count = gr.Markdown(elem_id="evaluation-count")
            thumbnails = gr.Gallery(label="Samples (click one)", columns=6, height=360, allow_preview=False,
                                    object_fit="contain", elem_id="evaluation-samples")
            with gr.Row():
                with gr.Column(scale=5, min_width=280):
                    sample_images = gr.Gallery(label="Selected sample", columns=5, height=180, allow_preview=True)
                    sample_numbers = gr.Markdown()
                    open_button = gr.Button("Open in the main view and explain", variant="secondary")
                    gr.Markdown("Explain runs in the main view with its decoding settings.")
                with gr.Column(scale=5, min_width=280):
                    sample_prompt = gr.Textbox(label="Prompt", lines=2, interactive=False)
                    sample_reference = gr.Textbox(label="Reference", interactive=False)
                    sample_sam = gr.Textbox(label="SAM", interactive=False)
                    sample_baseline = gr.Textbox(label="Baseline", interactive=False)
            sample_table = gr.Dataframe(headers=BROWSER_HEADERS, interactive=False, wrap=True, max_height=400,
                                        label="Every sample that passes the filters", elem_id="evaluation-table-samples")
        with gr.Tab("Where guidance helps"):
            view_blocks = []
            for name in VIEW_NAMES:
                with gr.Column(visible=False) as block:
                    heading = gr.Markdown()
                    figure = gr.Image(type="filepath", interactive=False, show_label=False)
                    data = gr.Dataframe(interactive=False, wrap=True, max_height=260)
                    download = gr.File(label="The data and the figure", file_count="multiple", interactive=False)
                view_blocks.append((block, heading, figure, data, download))
        with gr.Tab("Export"):
            exports = gr.File(label="Predictions and tables (the command line's files), every sample, every view",
                              file_count="multiple", interactive=False)

    minilink_inputs = [size, min_images, max_images_slider, objects, decoys, seed, tasks]

    def show_source(kind):
        return gr.update(visible=kind == "minilink"), gr.update(visible=kind == "upload")

    source.change(show_source, source, [minilink_box, upload_box], api_visibility="private")

    def start(kind, minilink, annotations_file, zip_file, tokens, previous, request, progress):
        session = getattr(request, "session_hash", None)
        event = switches.start(session)
        try:
            record = evaluate(service, kind, minilink, annotations_file, zip_file, tokens, event,
                              lambda done, total: progress(done / total, desc=f"{done} of {total} samples"))
        except (InputError, ResourceError) as error:
            raise refusal(str(error)) from None
        except Exception as error:  # never a traceback on the page; the next run still works
            LOG.exception("evaluation failed")
            raise refusal(f"The evaluation failed ({error.__class__.__name__}).") from None
        finally:
            switches.finish(session, event)
        remove_run(previous)
        return record

    def run_page(kind, size, fewest, most, objects, decoys, seed, tasks, annotations_file, zip_file, tokens, previous,
                 request: gr.Request, progress=gr.Progress()):
        minilink = (size, fewest, most, objects, decoys, seed, tasks)
        record = start(kind, minilink, annotations_file, zip_file, tokens, previous, request, progress)
        samples = record.outcome.samples
        tasks_seen = [ALL, *dict.fromkeys(s.prediction.task for s in samples)]
        counts = [ALL, *sorted({str(s.prediction.num_images) for s in samples}, key=int)]
        plot_path = next((f for f in record.files if f.endswith("results.png")), None)
        return (record, status_text(record), record.table, plot_path, gr.update(choices=tasks_seen, value=ALL),
                gr.update(choices=counts, value=ALL), record.files, *view_updates(record))

    def view_updates(record: EvaluationRecord) -> list:
        updates = []
        views = {view.name: view for view in record.views}
        for name in VIEW_NAMES:
            view = views.get(name)
            if view is None:
                updates += [gr.update(visible=False), "", None, None, None]
                continue
            stem = record.folder / "views" / name
            rows = [{k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()} for row in view.rows]
            updates += [gr.update(visible=True), f"### {view.title}\n{view.note}", str(stem.with_suffix(".png")),
                        gr.update(value=[list(r.values()) for r in rows], headers=list(rows[0])),
                        [str(stem.with_suffix(s)) for s in (".csv", ".json", ".png")]]
        return updates

    def refresh(record, outcome, task, num_images, sort):
        """The filtered samples as pictures and as a table; the selection is cleared."""
        chosen = browse(record, outcome, task, num_images, sort)
        cleared = [None, None, "", "", "", "", ""]
        if record is None:
            return [], "", [], [], *cleared
        gallery = [(thumbnail(s, record.folder), f"{s.prediction.id} · Δ {s.cider_difference:+.0f}") for s in chosen[:THUMBNAILS]]
        note = f"{len(chosen)} of {len(record.outcome.samples)} samples pass the filters"
        note += f"; the first {THUMBNAILS} are shown as pictures." if len(chosen) > THUMBNAILS else "."
        return [s.index for s in chosen], note, gallery, browser_rows(chosen), *cleared

    def show_sample(record, index):
        sample = find_sample(record, index)
        if sample is None:
            return None, "", "", "", "", ""
        p = sample.prediction
        return sample.image_paths, sample_markdown(sample), sample.prompt, p.reference, p.answers["sam"], p.answers["baseline"]

    def pick_thumbnail(order_indices, event: gr.SelectData):
        return order_indices[event.index] if event.index is not None and event.index < len(order_indices) else None

    def pick_row(event: gr.SelectData):
        row = event.row_value or []
        return int(row[0]) if row and str(row[0]).isdigit() else None

    view_outputs = [c for block in view_blocks for c in block]
    run_inputs = [source, *minilink_inputs, annotations, images_zip, max_new_tokens, run_state]
    filters = [run_state, outcome_filter, task_filter, images_filter, order]
    sample_outputs = [sample_images, sample_numbers, sample_prompt, sample_reference, sample_sam, sample_baseline]
    browser_outputs = [order_state, count, thumbnails, sample_table, selected, *sample_outputs]
    run_button.click(
        run_page, run_inputs, [run_state, status, table, plot, task_filter, images_filter, exports, *view_outputs],
        api_visibility="private", concurrency_limit=1, concurrency_id="evaluation",
    ).success(refresh, filters, browser_outputs, api_visibility="private")
    for control in (outcome_filter, task_filter, images_filter, order):
        control.input(refresh, filters, browser_outputs, api_visibility="private")
    thumbnails.select(pick_thumbnail, order_state, selected, api_visibility="private").then(
        show_sample, [run_state, selected], sample_outputs, api_visibility="private")
    sample_table.select(pick_row, None, selected, api_visibility="private").then(
        show_sample, [run_state, selected], sample_outputs, api_visibility="private")

    def cancel(request: gr.Request):
        """Cancel this session's running evaluation (from the page or an API client): it stops within a second and
        keeps the samples it finished."""
        return "Cancelling…" if switches.cancel(getattr(request, "session_hash", None)) else "No evaluation is running."

    cancel_button.click(cancel, None, status, api_name="cancel_evaluation", queue=False)

    api_result = gr.Textbox(visible=False)
    api_files = gr.File(visible=False, file_count="multiple")
    api_button = gr.Button(visible=False)

    def api_evaluate(source, size, min_images, max_images, objects, decoys, seed, tasks, annotations=None, images_zip=None,
                     max_new_tokens=24, previous=None, request: gr.Request = None, progress=gr.Progress()):
        """Evaluate SAM next to the baseline on a dataset, as `python -m sam_core.evaluate` would: the same samples,
        metrics and files. Returns a JSON (status, rows as in results.json, the metrics table, every sample, the
        views) and the files.

        Args:
            source: "minilink" (generated on the fly from the settings below) or "upload" (annotations + images_zip)
            size: MiniLINK samples, at most SAM_MAX_EVAL_SAMPLES
            min_images: MiniLINK: fewest images per sample (at least 2)
            max_images: MiniLINK: most images per sample (at most SAM_MAX_IMAGES)
            objects: MiniLINK: objects per image, 3 to 9; 0 for the generator's range
            decoys: MiniLINK: version 1 with decoys (the earlier benchmark) instead of version 2
            seed: MiniLINK: the split's seed (2 = the test split)
            tasks: MiniLINK: any of "group", "story", "question"
            annotations: upload: the annotations JSON in the authors' schema
            images_zip: upload: a zip of the images the annotations name
            max_new_tokens: greedy decoding, new tokens per answer
        """
        minilink = (size, min_images, max_images, objects, decoys, seed, tasks)
        record = start(source, minilink, annotations, images_zip, max_new_tokens, previous, request, progress)
        return api_json(record), record.files, record

    api_button.click(api_evaluate, run_inputs, [api_result, api_files, run_state], api_name="evaluate",
                     concurrency_limit=1, concurrency_id="evaluation")
    return EvaluationTab(run_state, selected, open_button)


def find_sample(record: EvaluationRecord | None, index) -> SampleResult | None:
    if record is None or index is None:
        return None
    return next((s for s in record.outcome.samples if s.index == index), None)


def connect_main_view(tab: EvaluationTab, *, pages: gr.Tabs, main_page: str, gallery, task, question, caption_boxes: list,
                      reference):
    """"Open in the main view and explain": the selected sample's images and prompt go to the main view and its page
    is shown. Returns that event: the caller runs the main view's Explain when it succeeds."""

    def load(record, index):
        sample = find_sample(record, index)
        if sample is None:
            raise refusal("Select a sample first (click a picture or a table row).")
        chosen_task, question_text, captions = main_view_inputs(sample.prompt, len(sample.image_paths))
        captions = captions + [""] * (len(caption_boxes) - len(captions))
        note = f"Sample {sample.prediction.id} from the dataset evaluation. Reference answer: *{sample.prediction.reference}*"
        return (gr.update(selected=main_page), sample.image_paths, chosen_task, question_text,
                *captions[:len(caption_boxes)], note)

    return tab.open_button.click(load, [tab.run_state, tab.selected], [pages, gallery, task, question, *caption_boxes, reference],
                                 api_visibility="private")
