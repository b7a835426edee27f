"""The Explain section: one analysis run per click, kept per browser session (`sessions.ReportStore`), and one tab
per view. Explain draws every tab's figures once, for the browser's screen (wide or narrow); the selectors re-plot
from the kept run; the HTML report is drawn only when the Report tab's button asks for it (a download). The analysis
stack (visualization: matplotlib, captum) is imported on first use, not at start-up."""

from dataclasses import dataclass, fields

import gradio as gr
from gradio.processing_utils import save_bytes_to_cache
from gradio.utils import get_upload_folder

from .answers import answer_update, cut_short_notes
from .domain import out_of_domain_markdown
from .requests import prepare, refusals
from .service import SamService, served_folder
from .sessions import ReportStore

TABS = {"guidance": "Guidance", "attention": "Attention", "tokens": "Tokens", "alignment": "Alignment", "report": "Report"}
EMPTY = "Press **Explain** to fill this tab."
GONE = "This analysis is no longer kept on the server; press **Explain** again."
WHOLE_ANSWER = "whole answer"
DEFAULT_WINDOW = "default"
# Figures are drawn for the browser's width: its events send "narrow" (phones) or "wide" as their first input.
SCREEN_LAYOUT = "(layout, ...rest) => [window.innerWidth < 700 ? 'narrow' : 'wide', ...rest]"
# How to read each tab (the HTML report explains its sections in its own words).
GUIDES = {
    "guidance": "**How to read it.** α: at every patch position, the share of SAM's shared context that each image "
    "supplies (the images' maps sum to 1 at every patch). Strong colour: this image gives the context there.",
    "attention": "**How to read it.** Where the Q-Former's queries look when they turn each image into visual tokens, in "
    "the very run that produced the answers: SAM and the baseline on one scale, then their difference (red: SAM looks "
    "more, blue: less). Strong colour means much attention; the grey picture shows through where there is little.",
    "tokens": "**How to read it.** Each image, block of patches or prompt word is removed and the answer re-scored: "
    "red (or a tall bar) means it supports the answer, blue that it works against it. Pick a token to see what that "
    "one word depends on; the baseline is shown for the same word when its answer has it.",
    "alignment": "**How to read it.** How alike two images' visual tokens are (mean cosine similarity); the alignment "
    "score is the mean over image pairs. SAM's claim: guidance makes the images' tokens agree on what links them.",
    "report": "**What it is.** The whole analysis as one self-contained HTML page (every figure and number), and its "
    "numbers as JSON: to keep, mail or attach to an issue.",
}


@dataclass
class GuidanceTab:
    status: gr.Markdown
    figure: gr.Image


@dataclass
class AttentionTab:
    status: gr.Markdown
    stream: gr.Radio
    layer: gr.Dropdown
    head: gr.Dropdown
    query: gr.Dropdown
    figure: gr.Image


@dataclass
class TokensTab:
    status: gr.Markdown
    token: gr.Dropdown
    images: gr.Image
    patches: gr.Image
    words: gr.HTML


@dataclass
class AlignmentTab:
    status: gr.Markdown
    figure: gr.Image
    scores: gr.Markdown


@dataclass
class ReportTab:
    status: gr.Markdown
    write: gr.Button
    files: gr.File


def outputs_of(tab) -> list:
    return [getattr(tab, f.name) for f in fields(tab)]


@dataclass
class ExplainPanel:
    button: gr.Button
    window: gr.Dropdown
    progress: gr.Markdown
    note: gr.Markdown
    key: gr.State  # the session's report in the store
    layout: gr.Textbox  # "wide" or "narrow", from the browser's width
    guidance: GuidanceTab
    attention: AttentionTab
    tokens: TokensTab
    alignment: AlignmentTab
    report: ReportTab

    def tab(self, name: str):
        return getattr(self, name)

    @property
    def views(self) -> list:
        return [output for name in TABS for output in outputs_of(self.tab(name))]


def figure_image(label: str) -> gr.Image:
    return gr.Image(label=label, show_label=False, type="filepath", format="png", interactive=False, visible=False,
                    elem_classes="figure", buttons=["download", "fullscreen"])


@dataclass
class ExplainControls:
    button: gr.Button
    window: gr.Dropdown
    progress: gr.Markdown


def build_explain_controls() -> ExplainControls:
    """The Explain button and its setting, placed under the answers."""
    with gr.Row(equal_height=False):
        button = gr.Button("Explain the difference", variant="secondary", scale=2, min_width=160)
        # The finer choices depend on the model's patch grid: they appear after the first Explain.
        window = gr.Dropdown([DEFAULT_WINDOW], value=DEFAULT_WINDOW, label="Patch blocks (patches a side)", scale=1,
                             min_width=140, info="finer: sharper patch maps, slower")
    return ExplainControls(button, window, gr.Markdown(elem_id="explain-progress"))


def build_views(controls: ExplainControls) -> ExplainPanel:
    """The note on the analysis and one tab per view, each with its reading guide and an empty-state line."""
    note = gr.Markdown(elem_id="explain-note")
    with gr.Tabs(elem_id="views", overflow_behavior="wrap"):
        with gr.Tab(TABS["guidance"], id="guidance"):
            gr.Markdown(GUIDES["guidance"], elem_classes="guide")
            guidance = GuidanceTab(gr.Markdown(EMPTY), figure_image("Guidance maps"))
        with gr.Tab(TABS["attention"], id="attention"):
            gr.Markdown(GUIDES["attention"], elem_classes="guide")
            status = gr.Markdown(EMPTY)
            with gr.Row():
                stream = gr.Radio(["image"], value="image", label="Stream", min_width=120)
                layer = gr.Dropdown(["last"], value="last", label="Q-Former layer", min_width=110)
                head = gr.Dropdown(["mean", "max"], value="mean", label="Head", min_width=110)
                query = gr.Dropdown(["mean"], value="mean", label="Query", min_width=110)
            attention = AttentionTab(status, stream, layer, head, query, figure_image("Q-Former cross-attention"))
        with gr.Tab(TABS["tokens"], id="tokens"):
            gr.Markdown(GUIDES["tokens"], elem_classes="guide")
            status = gr.Markdown(EMPTY)
            token = gr.Dropdown([WHOLE_ANSWER], value=WHOLE_ANSWER, label="Attribute: SAM's whole answer or one of its tokens")
            tokens = TokensTab(status, token, figure_image("Per-image attribution"), figure_image("Per-patch attribution"),
                               gr.HTML(elem_id="word-attribution"))
        with gr.Tab(TABS["alignment"], id="alignment"):
            gr.Markdown(GUIDES["alignment"], elem_classes="guide")
            alignment = AlignmentTab(gr.Markdown(EMPTY), figure_image("Cross-image similarity"), gr.Markdown())
        with gr.Tab(TABS["report"], id="report"):
            gr.Markdown(GUIDES["report"], elem_classes="guide")
            report = ReportTab(gr.Markdown(EMPTY), gr.Button("Write the report", interactive=False, size="sm"),
                               gr.File(label="Self-contained HTML report and its JSON", file_count="multiple", visible=False))
    layout = gr.Textbox("wide", visible=False)  # set by the browser on every drawing event (SCREEN_LAYOUT)
    return ExplainPanel(controls.button, controls.window, controls.progress, note, gr.State(None), layout, guidance, attention,
                        tokens, alignment, report)


def analyse_after(event, panel: ExplainPanel, service: SamService, store: ReportStore, request: list, answers: list):
    """Run the analysis of `request` when `event` fires (Explain's click, or a step that succeeded) and draw every tab;
    the old report goes first. Returns the analysis event (a change of the inputs cancels it)."""
    def explain_request(*args, progress=gr.Progress()):
        return run_explain(service, store, *args, progress=progress)

    def forget(key):  # the old report goes at once: no tab may draw it while the new one is computed
        store.drop(key)
        return None, "", *empty_views("Explaining…")

    return event(forget, [panel.key], [panel.key, panel.note, *panel.views], api_visibility="private", queue=False).then(
        explain_request, [panel.layout, panel.key, panel.window, *request],
        [panel.key, panel.note, panel.window, *answers, *panel.views], api_visibility="private",
        show_progress_on=[panel.progress], js=SCREEN_LAYOUT,
    )


def wire_explain(panel: ExplainPanel, store: ReportStore):
    """The selectors re-plot the kept report; the Report tab's button writes the report."""
    panel.report.write.click(lambda key: report_files(store, key), panel.key, outputs_of(panel.report), api_visibility="private")
    attention = panel.attention
    attention.stream.input(
        lambda layout, key, stream: replot_stream(store, key, layout, stream), [panel.layout, panel.key, attention.stream],
        [attention.layer, attention.head, attention.query, attention.figure], api_visibility="private", js=SCREEN_LAYOUT)
    for control in (attention.layer, attention.head, attention.query):
        control.input(lambda layout, key, *selection: attention_figure(kept(store, key), layout, *selection),
                      [panel.layout, panel.key, attention.stream, attention.layer, attention.head, attention.query],
                      attention.figure, api_visibility="private", js=SCREEN_LAYOUT)
    panel.tokens.token.input(lambda layout, key, token: token_views(kept(store, key), layout, token),
                             [panel.layout, panel.key, panel.tokens.token],
                             [panel.tokens.images, panel.tokens.patches, panel.tokens.words], api_visibility="private",
                             js=SCREEN_LAYOUT)


# ---------------------------------------------------------------------------------------------- callbacks


def run_explain(service: SamService, store: ReportStore, layout, key, window, gallery, task, question, *rest, progress=None):
    """Analyse one request, keep its report for the session, and draw every tab (the report waits for its button)."""
    boxes = max(service.settings.max_images - 1, 1)
    captions, decoding_values = rest[:boxes], rest[boxes:]
    with refusals("analysis"):
        images, prompt, decoding = prepare(service, gallery, task, question, captions, decoding_values)
        report = service.explain(images, prompt, decoding, progress=lambda f, m: progress(f, desc=m), window=patch_window(window))
    key = store.put(report, replaces=key)
    notes = [out_of_domain_markdown(report.capture.domain, "the views below explain answers that mean nothing"),
             *report_notes(report, service.settings.request_timeout / 2)]
    views = [update for name in TABS for update in draw(report, name, layout)]
    capture = report.capture
    return (key, "\n\n".join(n for n in notes if n), window_choices(report, window), answer_update(capture.answers["sam"].text),
            answer_update(capture.answers["baseline"].text), *views)


def window_choices(report, chosen: str):
    """The patch-block choices for this model's grid: the default (named with its size) and every finer one."""
    from visualization import default_window

    side = report.patch_attributions["sam"].scores.shape[-1]
    default = default_window(side)
    choices = [(f"{default}×{default} ({DEFAULT_WINDOW})", DEFAULT_WINDOW)]
    choices += [(f"{w}×{w}", f"{w}×{w}") for w in range(default - 1, 0, -1)]
    return gr.update(choices=choices, value=chosen if chosen in [value for _, value in choices] else DEFAULT_WINDOW)


def kept(store: ReportStore, key):
    entry = store.get(key)
    return None if entry is None else entry.report


def patch_window(choice: str | None) -> int | None:
    """"1×1" → 1; the default → None (the analysis picks the window from the grid)."""
    return None if not choice or choice == DEFAULT_WINDOW else int(choice.split("×")[0])


def report_notes(report, time_limit: float) -> list[str]:
    """What the analysis could not do in full: figures that failed to draw, answers the time limit cut short."""
    notes = cut_short_notes(report.cut_short, time_limit)
    if report.figure_failures:
        names = ", ".join(f"{name} ({error})" for name, error in report.figure_failures.items())
        notes.append(f"⚠️ Some figures could not be drawn: {names}. The other views are complete; the numbers are in the report.")
    return notes


def draw(report, name: str, layout_name: str) -> list:
    """The updates of one tab's outputs for a report, with the selectors at their defaults."""
    from visualization import LAYOUTS, NO_GUIDANCE  # the analysis stack, on first use

    layout = LAYOUTS[layout_name]
    if name == "guidance":
        png = report.png("guidance", layout)
        return [NO_GUIDANCE if report.guidance is None else figure_failed(report, "guidance", png), picture(png)]
    if name == "attention":
        streams = ["image", "context"] if report.context_attention is not None else ["image"]
        png = report.png("attention", layout)
        return [figure_failed(report, "attention", png), gr.update(choices=streams, value="image"),
                *attention_selectors(report, "image"), picture(png)]
    if name == "tokens":
        tokens = [WHOLE_ANSWER] + [f"{i + 1}: {t}" for i, t in enumerate(report.capture.tokens["sam"])]
        return [blocks_note(report), gr.update(choices=tokens, value=WHOLE_ANSWER), *token_views(report, layout_name, WHOLE_ANSWER)]
    if name == "alignment":
        if report.capture.num_images < 2:
            return ["Alignment compares images with each other: it needs two or more.", picture(None), ""]
        scores = {mode: report.alignments[mode].score for mode in ("sam", "baseline")}
        png = report.png("alignment", layout)
        text = f"**Alignment score:** SAM {scores['sam']:.3f} · baseline {scores['baseline']:.3f} (higher: the images' tokens agree more)"
        return [figure_failed(report, "alignment", png), picture(png), text]
    if name == "report":
        return ["", gr.update(interactive=True), gr.update(value=None, visible=False)]
    raise ValueError(name)


def blocks_note(report) -> str:
    window = report.patch_attributions["sam"].window
    blocks = -(-report.patch_attributions["sam"].scores.shape[-1] // window)
    finer = " Finer blocks: “Patch blocks” beside Explain." if window > 1 else ""
    return f"Patch maps: blocks of {window}×{window} patches, {blocks}×{blocks} per image.{finer}"


def report_files(store: ReportStore, key) -> list:
    """The report's HTML and JSON, written the first time they are asked for, for this analysis."""
    entry = store.get(key)
    if entry is None:
        return empty_tab("report", EMPTY if key is None else GONE)
    if entry.files is None:
        entry.files = write_report(entry.report)
    return ["", gr.update(interactive=True), gr.update(value=entry.files, visible=True)]


def write_report(report) -> list[str]:
    """The HTML report and its JSON, drawn once for a wide screen, where Gradio serves them (and expires them)."""
    return [str(path) for path in report.write(served_folder("sam-report-") / "sam_report.html")]


def figure_failed(report, name: str, png) -> str:
    return f"⚠️ This figure could not be drawn ({report.figure_failures[name]}); its numbers are in the report." if png is None else ""


def picture(png: bytes | None):
    """A figure for a gr.Image: its PNG written once into Gradio's cache (served as is, cleaned with the cache)."""
    if png is None:
        return gr.update(value=None, visible=False)
    return gr.update(value=save_bytes_to_cache(png, "figure.png", get_upload_folder()), visible=True)


def attention_selectors(report, stream: str) -> list:
    from visualization import cross_attention_layers

    sam = report.capture.visual["sam"]
    layers = ["last"] + [str(i) for i in cross_attention_layers(sam, stream)]
    num_heads, num_queries = next(maps for maps in sam.image_cross_attentions if maps is not None).shape[2:4]  # (B, N, H, K, P)
    heads = ["mean", "max"] + [str(h) for h in range(num_heads)]
    queries = ["mean"] + [str(q) for q in range(num_queries)]
    return [gr.update(choices=layers, value="last"), gr.update(choices=heads, value="mean"),
            gr.update(choices=queries, value="mean")]


def replot_stream(store: ReportStore, key, layout: str, stream: str) -> list:
    entry = store.get(key)
    if entry is None:
        return [gr.skip() for _ in range(3)] + [picture(None)]
    return [*attention_selectors(entry.report, stream), attention_figure(entry.report, layout, stream, "last", "mean", "mean")]


def attention_figure(report, layout_name: str, stream: str, layer, head, query):
    """Re-plot the kept run's cross-attention (no model call): SAM vs the baseline for the image stream, or
    SAM's context stream over its context images."""
    if report is None:
        return picture(None)
    from visualization import (
        LAYOUTS, attention_maps, compare_attention, context_images, figure_png, plot_attention_comparison, plot_attention_maps,
    )

    layout = LAYOUTS[layout_name]
    sam, baseline = report.capture.visual["sam"], report.capture.visual["baseline"]
    head = head if head in ("mean", "max") else int(head)
    query = query if query == "mean" else int(query)
    layer = None if layer in (None, "last") else int(layer)
    images = report.capture.images
    if stream == "context" and sam.context_cross_attentions is not None:
        maps = attention_maps(sam, "context", layer=layer, head=head, query=query)
        figure = plot_attention_maps(maps, list(context_images(images, report.guidance)), layout=layout, images=images)
    else:
        figure = plot_attention_comparison(compare_attention(sam, baseline, layer=layer, head=head, query=query), images, layout)
    return picture(figure_png(figure))


def token_views(report, layout_name: str, token_label: str) -> list:
    """Per-image and per-patch attributions and prompt-word highlights for the whole answer or one of SAM's
    tokens (the baseline: the same word, where its answer has it)."""
    if report is None:
        return [picture(None), picture(None), ""]
    from visualization import LAYOUTS, TokenChoice, word_highlights_html

    layout = LAYOUTS[layout_name]
    token = None if token_label in (None, WHOLE_ANSWER) else int(token_label.split(":")[0]) - 1
    choice = TokenChoice.of(report.capture.tokens["sam"], report.capture.tokens["baseline"], token)
    return [picture(report.png("image-attribution", layout, choice)), picture(report.png("patch-attribution", layout, choice)),
            word_highlights_html(report.word_attributions, choice)]


# ---------------------------------------------------------------------------------------------- empty states


def tab_outputs(name: str) -> list[str]:
    return {"guidance": ["status", "figure"], "attention": ["status", "stream", "layer", "head", "query", "figure"],
            "tokens": ["status", "token", "images", "patches", "words"], "alignment": ["status", "figure", "scores"],
            "report": ["status", "write", "files"]}[name]


def empty_tab(name: str, message: str) -> list:
    """A tab with nothing to show: its figures hidden, its selectors back to their defaults, `message` on top."""
    defaults = {"status": message, "figure": picture(None), "images": picture(None), "patches": picture(None),
                "words": "", "scores": "", "files": gr.update(value=None, visible=False), "write": gr.update(interactive=False),
                "stream": gr.update(choices=["image"], value="image"), "layer": gr.update(choices=["last"], value="last"),
                "head": gr.update(choices=["mean", "max"], value="mean"), "query": gr.update(choices=["mean"], value="mean"),
                "token": gr.update(choices=[WHOLE_ANSWER], value=WHOLE_ANSWER)}
    return [defaults[output] for output in tab_outputs(name)]


def empty_views(message: str = EMPTY) -> list:
    """Every tab emptied: what any change of the images or the task leaves."""
    return [update for name in TABS for update in empty_tab(name, message)]
