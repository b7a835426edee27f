"""The inputs panel: the image set (upload, reorder, remove, a random MiniLINK set), the examples, the task with its
question or captions, and decoding. Callbacks that change the inputs live here; what they make stale is cleared
by the page (`ui.build_demo`)."""

import base64
import io
import random
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from sam_core.data import COLOUR_QUESTION, SHAPE_QUESTION

from .examples import MAX_NEW_TOKENS as EXAMPLE_TOKENS
from .examples import Example, load_examples
from .refusals import refusal
from .service import TASKS, SamService, random_minilink_group, upload_path

DEFAULT_QUESTION = "What do these pictures have in common?"


@dataclass
class InputsPanel:
    gallery: gr.Gallery
    selected: gr.State
    earlier: gr.Button
    later: gr.Button
    remove: gr.Button
    remove_all: gr.Button
    random_set: gr.Button
    examples: gr.Dataset | None
    example_sets: list[Example]
    reference: gr.Markdown
    task: gr.Radio
    question: gr.Textbox
    captions: list[gr.Textbox]
    decoding: list  # preset, max new tokens, temperature, repetition penalty, seed
    compare: gr.Button

    @property
    def request(self) -> list:
        """What Compare and Explain read."""
        return [self.gallery, self.task, self.question, *self.captions, *self.decoding]

    @property
    def edits(self) -> list:
        """Every way a visitor changes the image set or the task by hand (examples and random sets aside)."""
        return [self.gallery.upload, self.gallery.delete, self.earlier.click, self.later.click, self.remove.click,
                self.remove_all.click, self.task.input, self.question.input, *(box.input for box in self.captions)]


def question_forms(service: SamService) -> list[str]:
    """The question forms the loaded model was trained on (the embedded MiniLINK model knows two)."""
    return [COLOUR_QUESTION, SHAPE_QUESTION] if service.info.get("source") == "embedded" else []


def build_inputs(service: SamService) -> InputsPanel:
    settings = service.settings
    max_captions = max(settings.max_images - 1, 1)
    gallery = gr.Gallery(label="Images (in order)", type="filepath", format="png", interactive=True, columns=4, height=230,
                         file_types=["image"], elem_id="gallery")
    with gr.Row(elem_classes="compact-buttons"):
        earlier = gr.Button("◀ Earlier", size="sm", min_width=60)
        later = gr.Button("Later ▶", size="sm", min_width=60)
        remove = gr.Button("Remove", size="sm", min_width=60)
        remove_all = gr.Button("Remove all", size="sm", min_width=60)
        random_set = gr.Button("New random MiniLINK set", size="sm", min_width=120)
    reference = gr.Markdown(elem_id="reference", render=False)  # shown beside the answers (answers.build_answers)
    task = gr.Radio(list(TASKS), value="Group captioning", label="Task")
    forms = question_forms(service)
    question = gr.Textbox(
        label="Question", visible=False, placeholder=forms[0] if forms else DEFAULT_QUESTION,
        info=("This model was trained on two question forms: " + " · ".join(f"“{q}”" for q in forms)) if forms else None,
    )
    captions = [gr.Textbox(label=f"Caption of image {i + 1}", visible=False) for i in range(max_captions)]
    with gr.Accordion("Decoding", open=False):
        preset = gr.Radio(["greedy", "sampling", "beam", "paper"], value="greedy", label="Preset",
                          info="paper = the authors' settings: 5 beams, repetition penalty 1.5")
        max_new_tokens = gr.Slider(1, max(settings.max_new_tokens, 2), value=min(32, settings.max_new_tokens), step=1,
                                   label="Max new tokens", interactive=settings.max_new_tokens > 1)
        temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature (sampling)")
        repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
        seed = gr.Number(0, precision=0, label="Seed")
    compare = gr.Button("Compare SAM with the baseline", variant="primary")
    example_sets = load_examples()
    examples = build_examples(example_sets)
    panel = InputsPanel(gallery, gr.State(None), earlier, later, remove, remove_all, random_set, examples, example_sets,
                        reference, task, question, captions, [preset, max_new_tokens, temperature, repetition_penalty, seed],
                        compare)
    wire_inputs(panel)
    return panel


def wire_inputs(panel: InputsPanel) -> None:
    """Caption boxes and the question follow the task; reorder and remove act on the selected image."""
    boxes = len(panel.captions)
    for trigger in (panel.gallery.change, panel.task.change):
        trigger(lambda gallery, task: show_text_boxes(gallery, task, boxes), [panel.gallery, panel.task],
                [*panel.captions, panel.question], api_visibility="private", queue=False)
    panel.gallery.select(remember_selection, None, panel.selected, api_visibility="private", queue=False)
    for button, action in ((panel.earlier, "earlier"), (panel.later, "later"), (panel.remove, "remove")):
        button.click(lambda g, i, a=action: rearrange(g, i, a), [panel.gallery, panel.selected], [panel.gallery, panel.selected],
                     api_visibility="private")
    panel.remove_all.click(lambda: ([], None), None, [panel.gallery, panel.selected], api_visibility="private", queue=False)
    counter = gr.State(random.randint(0, 10**6))
    panel.random_set.click(new_random_set, [counter], [panel.gallery, panel.task, panel.reference, counter],
                           api_visibility="private")


def show_text_boxes(gallery, task, boxes: int):
    """A caption box per image but the last for storytelling; the question box for a free question."""
    count = len(gallery or [])
    story = task == "Storytelling"
    return [gr.update(visible=story and i < max(count - 1, 1)) for i in range(boxes)] + [
        gr.update(visible=task == "Free question")
    ]


def remember_selection(event: gr.SelectData):
    return event.index


def rearrange(gallery_value, index, action):
    """Move or remove the selected image; returns the new order and the new selection."""
    items = [upload_path(item) for item in gallery_value or []]
    if index is None or not 0 <= index < len(items):
        raise refusal("Select an image in the gallery first.")
    if action == "remove":
        items.pop(index)
        return items, None
    target = index - 1 if action == "earlier" else index + 1
    if 0 <= target < len(items):
        items[index], items[target] = items[target], items[index]
        index = target
    return items, index


def new_random_set(counter):
    images, _, reference = random_minilink_group(counter)
    note = f"**A new random MiniLINK set.** Reference answer: *{reference}*"
    return images, "Group captioning", note, counter + 1


# ---------------------------------------------------------------------------------------------- examples


def build_examples(example_sets: list[Example]) -> gr.Dataset | None:
    """A compact, labelled set: each example's thumbnails and the line saying what it shows."""
    if not example_sets:
        return None
    samples = [[example_card(example)] for example in example_sets]
    return gr.Dataset(components=[gr.HTML(visible=False)], samples=samples, type="index", samples_per_page=len(samples),
                      label="Examples: MiniLINK sets chosen by measurement on this model (click to load and answer)",
                      elem_id="examples")


def example_card(example: Example) -> str:
    thumbnails = "".join(f'<img src="data:image/png;base64,{thumbnail(path)}" alt="">' for path in example.images)
    return f'<div class="example"><div class="thumbs">{thumbnails}</div><div><b>{example.task}</b> · {example.shows}</div></div>'


def thumbnail(path: str, size: int = 40) -> str:
    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def load_example(example: Example, max_captions: int, max_new_tokens: int) -> list:
    """The example's images, task, question, captions and reference; decoding set to what its outcome was
    measured with (greedy, seed 0)."""
    captions = (example.captions + [""] * max_captions)[:max_captions]
    reference = (f"**Example: {example.task.lower()}.** Reference answer: *{example.reference}* — {example.shows} "
                 "(measured with greedy decoding, seed 0)")
    decoding = ["greedy", min(EXAMPLE_TOKENS, max_new_tokens), 1.0, 1.0, 0]
    return [example.images, example.task, example.question, *captions, reference, *decoding]
