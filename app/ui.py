"""The Gradio Blocks UI. Callbacks are thin: they validate through SamService and turn its results into
component updates; errors reach the page as gr.Error messages, never tracebacks."""

import io
import json
import logging
import random
import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image

from visualization import (
    attention_maps, compare_attention, context_images, cross_attention_layers, plot_attention_comparison,
    plot_attention_maps, plot_patch_attribution,
)
from visualization.common import figure_png

from .evaluation_tab import build_evaluation_tab, connect_main_view
from .service import TASKS, Decoding, InputError, ResourceError, SamService, random_minilink_group, upload_path
from .settings import AppSettings

LOG = logging.getLogger("sam_studio")
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
INTRO = """# SAM studio
Upload a set of images and a prompt. **SAM** (Semantic Alignment for Multimodal LLMs, ACM MM 2024) lets the
other images guide what it keeps from each one; the **baseline** is the same model reading every image
independently. Compare their answers, then open the tabs to see why they differ."""
HONEST = """The embedded model is a tiny SAM trained on **MiniLINK**, a synthetic world of coloured shapes: it knows
only that world. For real photographs, run the full InstructBLIP-Vicuna-7B SAM on a GPU
(`SAM_MODEL=instructblip-vicuna-7b SAM_ADAPTER=sam_adapter.safetensors python app.py`; see the README)."""
CSS = """
.answer textarea {font-size: 1.05rem}
#banner {border-left: 4px solid #e0a800; padding-left: 8px}
"""


def model_markdown(service: SamService) -> str:
    info = service.info
    lines = [
        f"**Model:** {info['name']} ({info['source']}) · **quantization:** {info['quantization']} · "
        f"**device:** {info['device']} · **dtype:** {info['dtype']}",
        f"**SAM adapter:** {'loaded' if not info['guidance_identity'] else 'none (guidance is the identity)'} · "
        f"**context:** {info['context']} · **exchange layer:** {info['exchange_layer']} · "
        f"**tokens per image:** {info['num_query_tokens']}",
    ]
    return "\n\n".join(lines)


def banner_markdown(service: SamService) -> str:
    notes = [n for n in (service.notice, service.identity_warning()) if n]
    return "\n\n".join(f"⚠️ {n}" for n in notes)


def stats_markdown(stats: dict, cut_short: list[str] = (), time_limit: float = 0.0) -> str:
    if not stats:
        return ""
    how = "in one batch" if stats["batched"] else "one after the other"
    extra = f", GPU peak {stats['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in stats else ""
    text = f"**Both answers ({how}):** {stats['seconds']:.2f} s, process memory {stats['rss_mb']:.0f} MB{extra}"
    return text + "".join(f"\n\n{note}" for note in cut_short_notes(cut_short, time_limit))


def refusal(message: str) -> gr.Error:
    """The message for the page; no traceback in the log for it (unexpected failures are logged where caught)."""
    return gr.Error(message, print_exception=False)


def cut_short_notes(cut_short: list[str], time_limit: float) -> list[str]:
    return [
        f"⏱️ {'SAM' if mode == 'sam' else 'The baseline'}'s answer was cut short at the time limit ({time_limit:g} s)."
        for mode in cut_short
    ]


def report_notes_markdown(failures: dict[str, str], cut_short: list[str], time_limit: float) -> str:
    """What the analysis could not do in full: figures that failed to draw, answers the time limit cut short."""
    notes = cut_short_notes(cut_short, time_limit)
    if failures:
        names = ", ".join(f"{name} ({error})" for name, error in failures.items())
        notes.append(f"⚠️ Some figures could not be drawn: {names}. The other views are complete; the numbers are in the report.")
    return "\n\n".join(notes)


def png_image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def attention_figure(report, stream: str, layer, head, query) -> Image.Image | None:
    """Re-plot the cached run's cross-attention (no model call): SAM vs baseline for the image stream, or
    SAM's context stream over the context images."""
    if report is None:
        return None
    sam, baseline = report.capture.visual["sam"], report.capture.visual["baseline"]
    head = head if head in ("mean", "max") else int(head)
    query = query if query == "mean" else int(query)
    layer = None if layer in (None, "last") else int(layer)
    if stream == "context":
        if sam.context_cross_attentions is None:
            return None
        maps = attention_maps(sam, "context", layer=layer, head=head, query=query)
        return png_image(figure_png(plot_attention_maps(maps, list(context_images(report.capture.images, report.guidance)))))
    comparison = compare_attention(sam, baseline, layer=layer, head=head, query=query)
    return png_image(figure_png(plot_attention_comparison(comparison, report.capture.images)))


def attribution_views(report, token_label: str):
    """Patch heatmaps and prompt-word highlights for the whole answer or one generated token (cached)."""
    if report is None:
        return None, None, None
    token = None if token_label in (None, "whole answer") else int(token_label.split(":")[0])
    sam_tokens = len(report.capture.tokens["sam"])
    baseline_token = token if token is None or token < len(report.capture.tokens["baseline"]) else None
    patches = plot_patch_attribution(
        report.patch_attributions["sam"], report.patch_attributions["baseline"], report.capture.images,
        token=token if token is None or token < sam_tokens else None,
    )
    words = {mode: report.word_attributions[mode] for mode in ("sam", "baseline")}
    return (
        png_image(figure_png(patches)),
        words["sam"].highlighted(token),
        words["baseline"].highlighted(baseline_token),
    )


def build_demo(service: SamService) -> gr.Blocks:
    settings: AppSettings = service.settings
    max_captions = max(settings.max_images - 1, 1)

    time_limit = settings.request_timeout

    def compare_states(gallery, task, question, captions, decoding_values, exact_captions=False):
        """The service's growing answers; refusals and failures become gr.Error messages, never tracebacks."""
        try:
            images = service.images(gallery)
            prompt = service.prompt(task, len(images), question, list(captions), exact_captions)
            preset, max_new_tokens, temperature, repetition_penalty, seed = decoding_values
            decoding = Decoding(preset, int(max_new_tokens), float(temperature), float(repetition_penalty), int(seed))
            yield from service.compare(images, prompt, decoding)
        except (InputError, ResourceError) as error:
            raise refusal(str(error)) from None
        except Exception as error:  # never a traceback on the page; the next request still works
            LOG.exception("compare failed")
            raise refusal(f"Generation failed ({error.__class__.__name__}). Try fewer images or tokens.") from None

    def run_compare(gallery, task, question, *rest):
        captions, decoding_values = rest[:max_captions], rest[max_captions:]
        for state in compare_states(gallery, task, question, captions, decoding_values):
            per_answer = time_limit if state["stats"].get("batched", True) else time_limit / 2
            yield state["sam"], state["baseline"], stats_markdown(state["stats"], state["cut_short"], per_answer)

    def api_compare(files, task, question, captions_text, preset, max_new_tokens, seed):
        """Both answers for uploaded files: (SAM answer, baseline answer, JSON with timings, the model, a notice if
        the configured model could not be loaded, and which answers the time limit cut short)."""
        captions = [line for line in (captions_text or "").splitlines() if line.strip()]
        state = None
        for state in compare_states(files, task, question, captions, (preset, max_new_tokens, 1.0, 1.0, seed), True):
            pass
        details = {"model": service.info, "prompt_task": task, "notice": service.notice, "cut_short": state["cut_short"],
                   "stats": state["stats"]}
        return state["sam"], state["baseline"], json.dumps(details)

    def show_caption_boxes(gallery, task):
        count = len(gallery or [])
        story = task == "Storytelling"
        return [gr.update(visible=story and i < max(count - 1, 1)) for i in range(max_captions)] + [
            gr.update(visible=task == "Free question")
        ]

    def new_random_set(counter):
        images, prompt, reference = random_minilink_group(counter)
        return images, "Group captioning", f"A new MiniLINK group. Reference answer: *{reference}*", counter + 1

    with gr.Blocks(title="SAM studio") as demo:
        gr.Markdown(INTRO)
        banner = gr.Markdown(banner_markdown(service), elem_id="banner")
        with gr.Tabs(selected="main") as pages:
            with gr.Tab("Compare and explain", id="main"):
                with gr.Row():
                    with gr.Column(scale=5):
                        gallery = gr.Gallery(label="Images (in order)", type="filepath", interactive=True, columns=4, height=260,
                                             file_types=["image"])
                        with gr.Row():
                            earlier_button = gr.Button("◀ Move selected earlier", size="sm")
                            later_button = gr.Button("Move selected later ▶", size="sm")
                            remove_button = gr.Button("Remove selected", size="sm")
                        with gr.Row():
                            random_button = gr.Button("New random MiniLINK set", size="sm")
                            gr.ClearButton([gallery], value="Remove all", size="sm")
                        reference = gr.Markdown()
                        task = gr.Radio(list(TASKS), value="Group captioning", label="Task")
                        question = gr.Textbox(label="Question", placeholder="What do these pictures have in common?", visible=False)
                        caption_boxes = [gr.Textbox(label=f"Caption of image {i + 1}", visible=False) for i in range(max_captions)]
                        with gr.Accordion("Decoding", open=False):
                            preset = gr.Radio(["greedy", "sampling", "beam", "paper"], value="greedy", label="Preset",
                                              info="paper = the authors' settings: 5 beams, repetition penalty 1.5")
                            max_new_tokens = gr.Slider(1, settings.max_new_tokens, value=min(32, settings.max_new_tokens), step=1,
                                                       label="Max new tokens")
                            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature (sampling)")
                            repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
                            seed = gr.Number(0, precision=0, label="Seed")
                        compare_button = gr.Button("Compare SAM with the baseline", variant="primary")
                    with gr.Column(scale=6):
                        with gr.Row():
                            sam_answer = gr.Textbox(label="SAM (guided)", lines=4, elem_classes="answer", interactive=False)
                            baseline_answer = gr.Textbox(label="Baseline (each image alone)", lines=4, elem_classes="answer",
                                                         interactive=False)
                        stats = gr.Markdown()
                        with gr.Accordion("Model", open=False):
                            gr.Markdown(model_markdown(service))
                            gr.Markdown(HONEST)

                report_state = gr.State(None)
                explain_button = gr.Button("Explain the difference (maps, attention, attributions)", variant="secondary")
                explain_note = gr.Markdown(elem_id="explain-note")
                with gr.Tabs():
                    with gr.Tab("Guidance maps"):
                        gr.Markdown("Where each image supplies the shared context: SAM's adaptive-adjustment weights α over its patches.")
                        guidance_image = gr.Image(label="Guidance maps", type="pil", interactive=False)
                    with gr.Tab("Attention explorer"):
                        with gr.Row():
                            stream = gr.Radio(["image", "context"], value="image", label="Stream")
                            layer = gr.Dropdown(["last"], value="last", label="Q-Former layer")
                            head = gr.Dropdown(["mean", "max"], value="mean", label="Head")
                            query = gr.Dropdown(["mean"], value="mean", label="Query")
                        attention_image = gr.Image(label="Q-Former cross-attention", type="pil", interactive=False)
                    with gr.Tab("Token attribution"):
                        token_choice = gr.Dropdown(["whole answer"], value="whole answer", label="Generated token (SAM's answer)")
                        image_bars = gr.Image(label="Per-image contribution", type="pil", interactive=False)
                        patch_maps = gr.Image(label="Per-patch contribution", type="pil", interactive=False)
                        with gr.Row():
                            sam_words = gr.HighlightedText(label="Prompt words → SAM's answer", combine_adjacent=False,
                                                           show_legend=False, color_map=None)
                            baseline_words = gr.HighlightedText(label="Prompt words → baseline's answer", combine_adjacent=False,
                                                                show_legend=False)
                    with gr.Tab("Alignment"):
                        alignment_image = gr.Image(label="Cross-image similarity of the visual tokens", type="pil", interactive=False)
                        alignment_text = gr.Markdown()
                    with gr.Tab("Report"):
                        report_file = gr.File(label="Self-contained HTML report (and its JSON)", file_count="multiple")

                def run_explain(gallery, task, question, *rest, progress=gr.Progress()):
                    captions, (preset, max_new_tokens, temperature, repetition_penalty, seed) = rest[:max_captions], rest[max_captions:]
                    try:
                        images = service.images(gallery)
                        prompt = service.prompt(task, len(images), question, list(captions))
                        decoding = Decoding(preset, int(max_new_tokens), float(temperature), float(repetition_penalty), int(seed))
                        report = service.explain(images, prompt, decoding, progress=lambda f, m: progress(f, desc=m))
                    except (InputError, ResourceError) as error:
                        raise refusal(str(error)) from None
                    except Exception as error:
                        LOG.exception("explain failed")
                        raise refusal(f"Analysis failed ({error.__class__.__name__}). Try fewer images or tokens.") from None
                    figures = report.figures()
                    try:
                        patches, words_sam, words_baseline = attribution_views(report, "whole answer")
                    except Exception as error:  # a figure that cannot be drawn must not cost the other views
                        report.figure_failures["patch-attribution"] = error.__class__.__name__
                        patches, words_sam, words_baseline = None, None, None
                    folder = Path(tempfile.mkdtemp(prefix="sam-report-"))
                    html_path, json_path = report.write(folder / "sam_report.html")
                    sam_visual = report.capture.visual["sam"]
                    layers = [str(i) for i in cross_attention_layers(sam_visual)]
                    heads = ["mean", "max"] + [str(h) for h in range(service.loaded.model.config.qformer_config.num_attention_heads)]
                    queries = ["mean"] + [str(q) for q in range(service.info["num_query_tokens"])]
                    tokens = ["whole answer"] + [f"{i}: {t}" for i, t in enumerate(report.capture.tokens["sam"])]
                    scores = {mode: report.alignments[mode].score for mode in ("sam", "baseline")}
                    alignment_note = " · ".join(
                        f"**{label} alignment score:** {scores[mode]:.3f}" if scores[mode] is not None else f"**{label}:** one image"
                        for mode, label in (("sam", "SAM"), ("baseline", "Baseline"))
                    )

                    def picture(key):
                        return png_image(figures[key]) if key in figures else None

                    return (
                        report,
                        report_notes_markdown(report.figure_failures, report.cut_short, time_limit / 2),
                        report.capture.answers["sam"].text,
                        report.capture.answers["baseline"].text,
                        picture("guidance"),
                        gr.update(choices=["last"] + layers, value="last"),
                        gr.update(choices=heads, value="mean"),
                        gr.update(choices=queries, value="mean"),
                        picture("attention"),
                        gr.update(choices=tokens, value="whole answer"),
                        picture("image-attribution"),
                        patches,
                        words_sam,
                        words_baseline,
                        picture("alignment"),
                        alignment_note,
                        [str(html_path), str(json_path)],
                    )

                explain_inputs = [gallery, task, question, *caption_boxes, preset, max_new_tokens, temperature, repetition_penalty, seed]
                explain_outputs = [report_state, explain_note, sam_answer, baseline_answer, guidance_image, layer, head, query, attention_image,
                                   token_choice, image_bars, patch_maps, sam_words, baseline_words, alignment_image, alignment_text,
                                   report_file]
                explain_button.click(run_explain, explain_inputs, explain_outputs, api_visibility="private")
                for control in (stream, layer, head, query):
                    control.change(attention_figure, [report_state, stream, layer, head, query], attention_image, api_visibility="private")
                token_choice.change(attribution_views, [report_state, token_choice], [patch_maps, sam_words, baseline_words],
                                    api_visibility="private")

                example_sets = sorted(EXAMPLES_DIR.glob("*/example.json"))
                if example_sets:
                    rows = []
                    for path in example_sets:
                        for entry in json.loads(path.read_text()):
                            captions = (entry.get("captions") or []) + [""] * max_captions
                            rows.append([[str(path.parent / name) for name in entry["images"]], entry["task"], *captions[:max_captions]])
                    def answer_example(gallery_value, task_value, *captions):
                        """Greedy answers for an example, cached lazily: the first click computes, later clicks reuse."""
                        final = None
                        for final in run_compare(gallery_value, task_value, "", *captions, "greedy", min(32, settings.max_new_tokens),
                                                 1.0, 1.0, 0):
                            pass
                        return final

                    gr.Examples(rows, [gallery, task, *caption_boxes], [sam_answer, baseline_answer, stats], answer_example,
                                cache_examples=True, cache_mode="lazy",
                                label="Examples (MiniLINK sets; the model was trained on this world)")
            with gr.Tab("Evaluate a dataset", id="evaluate"):
                evaluation = build_evaluation_tab(service)
        connect_main_view(evaluation, pages=pages, main_page="main", gallery=gallery, task=task, question=question,
                          caption_boxes=caption_boxes, reference=reference, explain_fn=run_explain,
                          explain_inputs=explain_inputs, explain_outputs=explain_outputs)

        decoding = [preset, max_new_tokens, temperature, repetition_penalty, seed]
        compare_button.click(run_compare, [gallery, task, question, *caption_boxes, *decoding], [sam_answer, baseline_answer, stats],
                             api_visibility="private")
        for trigger in (gallery.change, task.change):
            trigger(show_caption_boxes, [gallery, task], [*caption_boxes, question], api_visibility="private")
        selected = gr.State(None)

        def remember_selection(event: gr.SelectData):
            return event.index

        def rearrange(gallery_value, index, action):
            """Move or remove the selected image; returns the new order and the new selection."""
            items = [upload_path(item) for item in gallery_value or []]
            if index is None or not 0 <= index < len(items):
                raise gr.Error("Select an image in the gallery first.")
            if action == "remove":
                items.pop(index)
                return items, None
            target = index - 1 if action == "earlier" else index + 1
            if 0 <= target < len(items):
                items[index], items[target] = items[target], items[index]
                index = target
            return items, index

        gallery.select(remember_selection, None, selected, api_visibility="private")
        for button, action in ((earlier_button, "earlier"), (later_button, "later"), (remove_button, "remove")):
            button.click(lambda g, i, a=action: rearrange(g, i, a), [gallery, selected], [gallery, selected],
                         api_visibility="private")
        counter = gr.State(random.randint(0, 10**6))
        random_button.click(new_random_set, [counter], [gallery, task, reference, counter], api_visibility="private")

        with gr.Row(visible=False):
            api_files = gr.File(file_count="multiple", label="API images")
            api_captions = gr.Textbox(label="API captions, one per line")
            api_json = gr.Textbox(label="API result")
            api_button = gr.Button("api")
        def api_explain(files, task, question, captions_text, max_new_tokens, seed):
            """Every analysis view of one run: (JSON of all numbers, the HTML report)."""
            captions = [line for line in (captions_text or "").splitlines() if line.strip()]
            try:  # the API, unlike the page, must send exactly one caption per image but the last
                service.prompt(task, len(files or []), question, captions, exact_captions=True)
            except InputError as error:
                raise refusal(str(error)) from None
            captions += [""] * (max_captions - len(captions))
            outputs = run_explain(files, task, question, *captions[:max_captions], "greedy", max_new_tokens, 1.0, 1.0, seed,
                                  progress=lambda *args, **kwargs: None)
            report, html_path = outputs[0], outputs[-1][0]
            details = {**report.to_dict(), "figure_failures": report.figure_failures, "cut_short": report.cut_short}
            return json.dumps(details), html_path

        api_report = gr.File(visible=False)
        api_explain_button = gr.Button(visible=False)
        api_explain_button.click(api_explain, [api_files, task, question, api_captions, max_new_tokens, seed],
                                 [api_json, api_report], api_name="explain")
        api_button.click(api_compare, [api_files, task, question, api_captions, preset, max_new_tokens, seed],
                         [sam_answer, baseline_answer, api_json], api_name="compare")
        demo.load(lambda: banner_markdown(service), None, banner, api_visibility="private")
    return demo
