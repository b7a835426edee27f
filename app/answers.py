"""The answers panel: SAM's and the baseline's answers side by side, what they cost, a warning for images the model
does not know, and what is loaded. `run_compare` streams a request's answers into it."""

from contextlib import closing
from dataclasses import dataclass

import gradio as gr

from .requests import compare_states
from .service import SamService

EMPTY_ANSWER = "(empty: the model ended its answer at once)"
WAITING = "The answer appears here."


@dataclass
class AnswersPanel:
    domain: gr.Markdown
    sam: gr.Textbox
    baseline: gr.Textbox
    stats: gr.Markdown

    @property
    def outputs(self) -> list:
        return [self.sam, self.baseline, self.stats]


def build_answers(service: SamService, reference: gr.Markdown) -> AnswersPanel:
    """`reference`: the inputs' reference answer (of an example or a random set), shown above the answers."""
    domain = gr.Markdown(elem_id="domain-warning")
    reference.render()
    with gr.Row():
        sam = gr.Textbox(label="SAM (guided)", lines=3, elem_classes="answer", interactive=False, placeholder=WAITING)
        baseline = gr.Textbox(label="Baseline (each image alone)", lines=3, elem_classes="answer", interactive=False,
                              placeholder=WAITING)
    stats = gr.Markdown(elem_id="stats")
    with gr.Accordion("Model", open=False):
        gr.Markdown(model_markdown(service))
    return AnswersPanel(domain, sam, baseline, stats)


def model_markdown(service: SamService) -> str:
    info = service.info
    weights = f" · **weights:** {info['weights_mb']:.1f} MB" if info["weights_mb"] is not None else ""
    lines = [
        f"**Model:** {info['name']} ({info['source']}) · **precision:** {info['precision']}{weights} · "
        f"**device:** {info['device']}",
        f"**SAM adapter:** {info['adapter'] or 'none (guidance is the identity)'} · "
        f"**context:** {info['context']} · **exchange layer:** {info['exchange_layer']} · "
        f"**tokens per image:** {info['num_query_tokens']}",
    ]
    return "\n\n".join(lines + [note for note in [info["precision_note"]] if note])


def run_compare(service: SamService, gallery, task, question, *rest):
    """Both answers as they grow, then their cost and a note for an answer that came back empty."""
    boxes = max(service.settings.max_images - 1, 1)
    captions, decoding_values = rest[:boxes], rest[boxes:]
    state = None
    with closing(compare_states(service, gallery, task, question, captions, decoding_values)) as states:  # a client
        for state in states:  # that leaves closes this generator: the service's then stops its generation at once
            yield state["sam"], state["baseline"], gr.skip()
    if state is not None:
        time_limit = service.settings.request_timeout / (1 if state["stats"].get("batched", True) else 2)
        yield (answer_update(state["sam"]), answer_update(state["baseline"]),
               stats_markdown(state["stats"], state["cut_short"], time_limit, empty_answers(state)))


def answer_update(text: str):
    """An answer; an empty one says so in its box."""
    return gr.update(value=text, placeholder=EMPTY_ANSWER if not text.strip() else WAITING)


def empty_answers(state: dict) -> list[str]:
    return [mode for mode in ("sam", "baseline") if not state[mode].strip()]


def stats_markdown(stats: dict, cut_short: list[str] = (), time_limit: float = 0.0, empty: list[str] = ()) -> str:
    if not stats:
        return ""
    how = "in one batch" if stats["batched"] else "one after the other"
    extra = f", GPU peak {stats['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in stats else ""
    text = f"**Both answers ({how}):** {stats['seconds']:.2f} s, process memory {stats['rss_mb']:.0f} MB{extra}"
    notes = cut_short_notes(cut_short, time_limit)
    if empty:
        who = "Both answers are" if len(empty) == 2 else ("SAM's answer is" if empty[0] == "sam" else "The baseline's answer is")
        notes.append(f"⚠️ {who} empty: the model ended its answer at once. Ask in the forms it was trained on "
                     "(the task presets, or the question forms under “Free question”).")
    return text + "".join(f"\n\n{note}" for note in notes)


def cut_short_notes(cut_short: list[str], time_limit: float) -> list[str]:
    return [
        f"⏱️ {'SAM' if mode == 'sam' else 'The baseline'}'s answer was cut short at the time limit ({time_limit:g} s)."
        for mode in cut_short
    ]
