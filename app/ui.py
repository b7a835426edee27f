"""SAM studio's page, as an outline: a header that says what the loaded model knows, then the pages (top-level
tabs: "Compare and explain", the inputs beside the answers, then the Explain views; "Evaluate a dataset"), then the
API endpoints. Each panel's builder and callbacks live in its own module (inputs, answers, explain, evaluation_tab,
api); this one wires what crosses panels: a new image set or task makes the answers and the views stale, so they are
cleared, and a dataset sample opens in the studio and is explained there."""

from dataclasses import dataclass

import gradio as gr

from .answers import WAITING, AnswersPanel, build_answers, run_compare
from .api import build_api
from .domain import check_domain, model_notice, out_of_domain_markdown
from .evaluation_tab import build_evaluation_tab, connect_main_view
from .explain import ExplainPanel, analyse_after, build_explain_controls, build_views, empty_views, wire_explain
from .inputs import InputsPanel, build_inputs, load_example
from .refusals import Blocks
from .service import SamService
from .sessions import ReportStore

INTRO = """# SAM studio
Upload a set of images and a prompt. **SAM** (Semantic Alignment for Multimodal LLMs, ACM MM 2024) lets the other
images guide what it keeps from each one; the **baseline** is the same model reading every image alone. Compare
their answers, then press Explain to see why they differ."""
CSS = """
.answer textarea {font-size: 1.05rem}
#banner {border-left: 4px solid #e0a800; padding-left: 8px}
#banner:empty {display: none}
#domain-warning p, #explain-note p {background: #fff4d6; border-left: 4px solid #e0a800; padding: 4px 8px; margin: 0}
.guide p {font-size: 0.95rem}
.figure .image-frame {padding-top: 30px}  /* room for the image's buttons above the figure's title */
.example {display: flex; gap: 8px; align-items: center; text-align: left}
.example .thumbs {display: flex; gap: 2px; flex-shrink: 0}
.example .thumbs img {width: 34px; height: 34px; border-radius: 3px}
#views button[role=tab] {padding-left: 8px; padding-right: 8px}
#gallery .grid-container {grid-template-columns: repeat(4, minmax(0, 1fr)) !important}  /* four a row, at any width */
@media (max-width: 700px) {
  #views button[role=tab] {padding-left: 5px; padding-right: 5px; font-size: 0.9rem}
  .example .thumbs img {width: 26px; height: 26px}
}
"""


def build_demo(service: SamService) -> gr.Blocks:
    store = ReportStore()
    ttl = service.settings.cache_ttl  # uploads, reports and figures leave Gradio's cache this many seconds after written
    with Blocks(title="SAM studio", delete_cache=(min(ttl, 600), ttl)) as demo:
        gr.Markdown(INTRO)
        banner = gr.Markdown(banner_markdown(service), elem_id="banner")
        inputs = build_pages(service, store)
        build_api(service, inputs.example_sets[0] if inputs.example_sets else None)
        demo.load(lambda: banner_markdown(service), None, banner, api_visibility="private", show_progress="hidden")
    return demo


def build_pages(service: SamService, store: ReportStore) -> InputsPanel:
    """The page's top-level sections: the studio, and the dataset evaluation, whose samples open in the studio and
    are explained there."""
    with gr.Tabs(elem_id="pages", selected="studio") as pages:
        with gr.Tab("Compare and explain", id="studio"):
            studio = build_studio(service)
        with gr.Tab("Evaluate a dataset", id="evaluate"):
            evaluation = build_evaluation_tab(service)
    inputs = studio.inputs
    opened = connect_main_view(evaluation, pages=pages, main_page="studio", gallery=inputs.gallery, task=inputs.task,
                               question=inputs.question, caption_boxes=inputs.captions, reference=inputs.reference)
    wire_studio(studio, service, store, explain_after=[opened.success])
    return inputs


def banner_markdown(service: SamService) -> str:
    """What the loaded model knows (embedded model), and why something else than asked is loaded, if it is."""
    notes = [model_notice(service)] + [f"⚠️ {n}" for n in (service.notice, service.identity_warning()) if n]
    return "\n\n".join(n for n in notes if n)


@dataclass
class Studio:
    inputs: InputsPanel
    answers: AnswersPanel
    explain: ExplainPanel


def build_studio(service: SamService) -> Studio:
    """Inputs beside the answers, the Explain views below."""
    with gr.Row():
        with gr.Column(scale=5, min_width=320):
            inputs = build_inputs(service)
        with gr.Column(scale=6, min_width=320):
            answers = build_answers(service, inputs.reference)
            controls = build_explain_controls()
    return Studio(inputs, answers, build_views(controls))


def wire_studio(studio: Studio, service: SamService, store: ReportStore, explain_after: list) -> None:
    """What crosses the studio's panels. `explain_after`: further events whose success runs Explain (a dataset sample
    opened in the studio)."""
    inputs, answers, explain = studio.inputs, studio.answers, studio.explain

    def stream_answers(*request):
        yield from run_compare(service, *request)

    running = [inputs.compare.click(stream_answers, inputs.request, answers.outputs, api_visibility="private")]
    running += [analyse_after(event, explain, service, store, inputs.request, [answers.sam, answers.baseline])
                for event in [explain.button.click, *explain_after]]
    wire_explain(explain, store)

    # Whatever changes the images or the task makes the answers and every view stale: they are cleared at once, and
    # answers or an analysis still running for the old inputs are cancelled (they would arrive stale).
    stale = [answers.sam, answers.baseline, answers.stats, explain.key, explain.note, *explain.views]
    if inputs.examples is not None:  # an example clears in the same step that loads it, then answers
        boxes, limit = len(inputs.captions), service.settings.max_new_tokens
        loaded = [inputs.gallery, inputs.task, inputs.question, *inputs.captions, inputs.reference, *inputs.decoding]
        example_answers = inputs.examples.click(
            lambda index, key: load_example(inputs.example_sets[index], boxes, limit) + forget_views(store, key),
            [inputs.examples, explain.key], loaded + stale, api_visibility="private", queue=False, cancels=running,
        ).then(stream_answers, inputs.request, answers.outputs, api_visibility="private")
        inputs.examples.click(None, cancels=[example_answers], api_visibility="private")  # a previous example's, still running
        running.append(example_answers)
    gr.on([*inputs.edits, inputs.random_set.click], lambda key: forget_views(store, key), explain.key, stale,
          api_visibility="private", queue=False, cancels=running)
    gr.on(inputs.edits, lambda: "", None, inputs.reference, api_visibility="private", queue=False)  # it was for the old set
    inputs.gallery.change(lambda gallery: domain_warning(service, gallery), inputs.gallery, answers.domain,
                          api_visibility="private")


def forget_views(store: ReportStore, key) -> list:
    store.drop(key)
    return [gr.update(value="", placeholder=WAITING), gr.update(value="", placeholder=WAITING), "", None, "", *empty_views()]


def domain_warning(service: SamService, gallery) -> str:
    """Flag the images the loaded model was not trained on, as soon as they are in the gallery."""
    try:
        images = service.images(gallery) if gallery else []
    except Exception:  # unreadable or too many images: Compare says what is wrong
        return ""
    return out_of_domain_markdown(check_domain(service, images))
