"""The named API endpoints (`/compare`, `/explain`) for gradio_client and the "Use via API" page: hidden
components with meaningful names, descriptions and example values, and the functions behind them."""

import json
from pathlib import Path

import gradio as gr

from sam_core.generation import domain_fields

from .examples import Example
from .requests import compare_states, prepare, refusals
from .service import TASKS, SamService, served_folder

REPO_ROOT = Path(__file__).resolve().parent.parent


def with_example(component, example):
    """The component, documented on the API page with `example` instead of Gradio's placeholder value."""
    component.example_inputs = lambda: example
    return component


def build_api(service: SamService, example: Example | None) -> None:
    """Hidden inputs and outputs of the two endpoints, wired to `compare` and `explain`."""
    settings = service.settings
    # Shown on the API page as handle_file('examples/…'): files a reader of the repository has.
    example_paths = [{"path": relative(path), "url": relative(path), "meta": {"_type": "gradio.FileData"}}
                     for path in (example.images if example else [])]
    with gr.Row(visible=False):
        images = with_example(gr.File(file_count="multiple", label="images: the image files, in order"), example_paths)
        task = gr.Radio(list(TASKS), value="Group captioning", label="task: Group captioning, Storytelling or Free question")
        question = with_example(gr.Textbox("", label="question: for a Free question only"), "")
        captions = with_example(gr.Textbox("", label="captions: Storytelling only, one per image but the last, one per line"), "")
        preset = gr.Radio(["greedy", "sampling", "beam", "paper"], value="greedy", label="preset: decoding settings")
        max_new_tokens = gr.Slider(1, max(settings.max_new_tokens, 2), value=min(20, settings.max_new_tokens), step=1,
                                   label=f"max_new_tokens: at most {settings.max_new_tokens}")
        seed = gr.Number(0, precision=0, label="seed: for sampling")
        sam = gr.Textbox(label="SAM's answer")
        baseline = gr.Textbox(label="the baseline's answer")
        details = gr.Textbox(label="details: JSON with the model, timings, out-of-domain images and answers cut short")
        numbers = gr.Textbox(label="numbers: JSON of every view (answers, maps, attributions, alignment)")
        report = gr.File(label="report: the self-contained HTML report")
        compare_button, explain_button = gr.Button("compare"), gr.Button("explain")

    def compare(images, task, question, captions, preset, max_new_tokens, seed):
        """Answer a prompt about an image set with SAM and with the baseline (the same model reading each image
        alone). Returns SAM's answer, the baseline's answer and a JSON string of details."""
        return api_compare(service, images, task, question, captions, preset, max_new_tokens, seed)

    def explain(images, task, question, captions, max_new_tokens, seed):
        """Every analysis view of one greedy comparison: a JSON string of all numbers and the HTML report."""
        return api_explain(service, images, task, question, captions, max_new_tokens, seed)

    # The API's values reach the service as sent (preprocess=False), which checks each one and names it in its
    # refusal; gr.File's own preprocessing would also leave an empty temporary file per image per call.
    compare_button.click(compare, [images, task, question, captions, preset, max_new_tokens, seed], [sam, baseline, details],
                         api_name="compare", preprocess=False)
    explain_button.click(explain, [images, task, question, captions, max_new_tokens, seed], [numbers, report],
                         api_name="explain", preprocess=False)


def relative(path: str) -> str:
    """The path from the repository's root, as a reader of the API page would type it."""
    return str(Path(path).relative_to(REPO_ROOT)) if Path(path).is_relative_to(REPO_ROOT) else Path(path).name


def api_compare(service: SamService, files, task, question, captions_text, preset, max_new_tokens, seed):
    """(SAM's answer, the baseline's answer, JSON details). Unlike the page, the API must send exactly one caption
    per image but the last."""
    decoding = (preset, max_new_tokens, 1.0, 1.0, seed)
    with refusals("generation"):
        captions = service.caption_lines(captions_text)
    state = None
    for state in compare_states(service, files, task, question, captions, decoding, exact_captions=True):
        pass
    details = {"model": service.info, "prompt_task": task, "notice": service.notice, "cut_short": state["cut_short"],
               "stats": state["stats"], **domain_fields(state["domain"])}
    return state["sam"], state["baseline"], json.dumps(details)


def api_explain(service: SamService, files, task, question, captions_text, max_new_tokens, seed):
    """(JSON of every number, the HTML report's path): figures drawn once, for the report."""
    with refusals("analysis"):
        captions = service.caption_lines(captions_text)
        images, prompt, decoding = prepare(service, files, task, question, captions, ("greedy", max_new_tokens, 1.0, 1.0, seed),
                                           exact_captions=True)
        report = service.explain(images, prompt, decoding)
    numbers = report.to_dict()  # go back in the response; only the HTML is written, where Gradio serves it
    html_path = served_folder("sam-report-") / "sam_report.html"
    html_path.write_text(report.to_html(numbers), encoding="utf-8")
    details = {**numbers, "figure_failures": report.figure_failures, "cut_short": report.cut_short}
    return json.dumps(details), str(html_path)

