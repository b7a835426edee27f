"""What the UI and the API call: validated inputs in, answers out. No Gradio components here."""

import gc
import os
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch
from PIL import Image
from transformers import StoppingCriteriaList

from sam_core.data import MiniLink, MiniLinkConfig
from sam_core.generation import GENERATION_PRESETS, AnswerDeadline, SamPipeline, answer_groups, generation_kwargs
from sam_core.loading import IDENTITY_WARNING, SamLoadError, load_sam
from sam_core.processing import (
    ImageLoadError, PromptError, group_caption_prompt, load_image, question_prompt, storytelling_prompt,
)

from visualization import Report, explain

from .privacy import public_text
from .settings import AppSettings

TASKS = ("Group captioning", "Storytelling", "Free question")
OUT_OF_MEMORY = "Out of memory: try fewer images or fewer new tokens."

try:  # On Hugging Face ZeroGPU Spaces, work that needs the GPU runs inside @spaces.GPU functions.
    import spaces

    gpu_task = spaces.GPU
except ImportError:

    def gpu_task(function=None, **_options):
        """No-op stand-in for `spaces.GPU` where the package is absent."""
        return function if function is not None else (lambda inner: inner)


class InputError(ValueError):
    """A request the app refuses, with a message meant for the person who sent it."""


class ResourceError(RuntimeError):
    """A valid request the server could not finish (out of memory); the message says what to try instead."""


@dataclass
class Decoding:
    preset: str = "greedy"
    max_new_tokens: int = 32
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def kwargs(self, limit: int) -> dict:
        if self.preset not in GENERATION_PRESETS:
            raise InputError(f"Unknown decoding preset {self.preset!r}.")
        if not 1 <= int(self.max_new_tokens) <= limit:
            raise InputError(f"Max new tokens must be between 1 and {limit}.")
        overrides = {"max_new_tokens": int(self.max_new_tokens)}
        if self.preset != "paper":
            overrides["repetition_penalty"] = float(self.repetition_penalty)
            if self.preset == "sampling":
                overrides["temperature"] = max(float(self.temperature), 1e-3)
        return generation_kwargs(self.preset, **overrides)


def on_zero_gpu() -> bool:
    """Hugging Face ZeroGPU Spaces attach a GPU only inside @spaces.GPU calls."""
    return os.environ.get("SPACES_ZERO_GPU", "") not in ("", "0", "false")


class SamService:
    """One loaded model serving SAM and the baseline; falls back to the embedded default when the configured
    model cannot be loaded, and says so. On ZeroGPU a quantised hub model is loaded inside the first GPU call
    (bitsandbytes needs the GPU to quantise), not at start-up."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.notice = None
        self.loaded = self.pipeline = None
        self.lock = threading.Lock()  # one generation at a time per model: torch on CPU is not faster in parallel
        if not (on_zero_gpu() and settings.model is not None and settings.quantization != "none"):
            self.ready()

    def ready(self) -> None:
        """Load the model if it is not loaded yet."""
        if self.loaded is not None:
            return
        settings = self.settings
        try:
            loaded = load_sam(settings.model, settings.adapter, settings.quantization, settings.device)
        except Exception as error:  # whatever is wrong with the configured weights, keep serving
            if settings.model is None and settings.adapter is None:
                raise
            reason = str(error) if isinstance(error, SamLoadError) else error.__class__.__name__
            self.notice = public_text(f"Could not load the configured model ({reason}). Serving the embedded default instead.")
            loaded = load_sam()
        self.loaded, self.pipeline = loaded, SamPipeline(loaded)

    @property
    def info(self) -> dict:
        if self.loaded is None:
            return {"name": self.settings.model, "source": "hub", "quantization": self.settings.quantization,
                    "device": "GPU (attached per request)", "dtype": "float16", "adapter": self.settings.adapter,
                    "context": "?", "exchange_layer": "?", "num_query_tokens": "?",
                    "guidance_identity": self.settings.adapter is None, "warning": None}
        info = self.loaded.info.to_dict()
        return {**info, "name": public_text(str(info["name"]))}

    def images(self, files) -> list[Image.Image]:
        """Uploaded files → RGB images (downscaled above the pixel limit), or a clear refusal."""
        paths = [upload_path(item) for item in files or []]
        if not paths:
            raise InputError("Add at least one image.")
        if len(paths) > self.settings.max_images:
            raise InputError(f"At most {self.settings.max_images} images per request; got {len(paths)}.")
        images = []
        for index, path in enumerate(paths, start=1):
            try:
                image = load_image(path)
            except ImageLoadError as error:
                raise InputError(f"Image {index}: {error}") from None
            images.append(downscale(image, self.settings.max_pixels))
        return images

    def prompt(self, task: str, num_images: int, text: str, captions: list[str], exact_captions: bool = False) -> str:
        """The task's prompt. The UI keeps hidden caption boxes when images are removed, so extra captions are
        dropped there; an API call (`exact_captions`) must send exactly one caption per image but the last."""
        if task == "Group captioning":
            return group_caption_prompt(num_images)
        if task == "Storytelling":
            if num_images < 2:
                raise InputError("Storytelling needs at least two images: captions for the first ones, the last to continue.")
            captions = list(captions or [])
            if exact_captions and len(captions) != num_images - 1:
                raise InputError(
                    f"Storytelling with {num_images} images needs {num_images - 1} captions (one per image but the last); "
                    f"got {len(captions)}."
                )
            captions = captions[: num_images - 1]
            if len(captions) < num_images - 1 or any(not question_prompt(c) for c in captions):
                raise InputError(f"Write a caption for each image but the last ({num_images - 1} captions).")
            return storytelling_prompt(captions)
        if task != "Free question":
            raise InputError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
        text = question_prompt(text or "")
        if not text:
            raise InputError("Write a question.")
        return text

    def check_prompt(self, prompt: str, num_images: int, max_new_tokens: int) -> None:
        """Markers and length against the loaded model (its tokenizer and positions) and SAM_MAX_PROMPT_TOKENS."""
        try:
            self.pipeline.check_prompt(prompt, num_images, max_new_tokens, limit=self.settings.max_prompt_tokens)
        except PromptError as error:
            message = str(error)
            raise InputError(message[:1].upper() + message[1:] + ".") from None

    @gpu_task
    def compare(self, images: list[Image.Image], prompt: str, decoding: Decoding) -> Iterator[dict]:
        """Yield the state of both answers as they grow (streamed where the decoding allows, else both appear
        when done), then the time and memory the request took. One extraction serves both modes."""
        settings = decoding.kwargs(self.settings.max_new_tokens)
        # SAM_REQUEST_TIMEOUT bounds the answering: all of it for one batch of two, half per answer decoded in turn.
        groups = answer_groups("compare", settings)
        deadline = AnswerDeadline(self.settings.request_timeout / len(groups))
        settings["stopping_criteria"] = StoppingCriteriaList([deadline])
        state = {"sam": "", "baseline": "", "stats": {}, "cut_short": []}
        with self.lock, out_of_memory_answer():
            self.ready()
            self.check_prompt(prompt, len(images), settings["max_new_tokens"])
            start, rss_before = time.perf_counter(), psutil.Process().memory_info().rss
            if settings.get("num_beams", 1) == 1:
                for texts in self.pipeline.stream(images, prompt, mode="compare", seed=decoding.seed, preset="greedy", **settings):
                    state.update(texts)
                    yield state
            else:
                result = self.pipeline.generate(images, prompt, mode="compare", seed=decoding.seed, preset="greedy", **settings)
                state.update({mode: answer.text for mode, answer in result.answers.items()})
            state["cut_short"] = [mode for group, cut in zip(groups, deadline.cut_short) if cut for mode in group]
            rss = psutil.Process().memory_info().rss
            state["stats"] = {
                "seconds": time.perf_counter() - start,
                "rss_mb": rss / 2**20,
                "rss_delta_mb": (rss - rss_before) / 2**20,
                "batched": len(groups) == 1,
            }
            if torch.cuda.is_available():
                state["stats"]["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            yield state

    @gpu_task
    def explain(self, images: list[Image.Image], prompt: str, decoding: Decoding, progress=None) -> Report:
        """Every analysis view of one compare-mode run (answers, maps and attributions from the same pass)."""
        settings = decoding.kwargs(self.settings.max_new_tokens)
        deadline = AnswerDeadline(self.settings.request_timeout / 2)  # the analysis decodes the two answers in turn
        settings["stopping_criteria"] = StoppingCriteriaList([deadline])
        with self.lock, out_of_memory_answer():
            self.ready()
            self.check_prompt(prompt, len(images), settings["max_new_tokens"])
            report = explain(self.pipeline, images, prompt, preset="greedy", seed=decoding.seed, progress=progress, **settings)
        report.cut_short = [mode for mode, cut in zip(report.capture.answers, deadline.cut_short) if cut]
        return report

    def identity_warning(self) -> str | None:
        return IDENTITY_WARNING if self.info["guidance_identity"] else None


@contextmanager
def out_of_memory_answer():
    """Running out of memory becomes a clear ResourceError after the failed request's memory is freed, so the
    next request can run."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as error:
        traceback.clear_frames(error.__traceback__)  # the failed request's tensors live on in its frames' locals
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ResourceError(OUT_OF_MEMORY) from None


def upload_path(item):
    """A gallery item ((path, caption), a file dict, a path or a PIL image) → what load_image reads."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("path") or (item.get("image") or {}).get("path")
    return item


def downscale(image: Image.Image, max_pixels: int) -> Image.Image:
    pixels = image.width * image.height
    if pixels <= max_pixels:
        return image
    scale = (max_pixels / pixels) ** 0.5
    return image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.BICUBIC)


def random_minilink_group(seed: int, num_images: int = 4, decoys: bool = True) -> tuple[list[Image.Image], str, str]:
    """A fresh MiniLINK group-captioning sample: (images, prompt, the reference answer). With decoys by default,
    the setting the embedded model was trained and scored in, where reading each image alone cannot tell which
    colour goes with which shape."""
    config = MiniLinkConfig(min_images=num_images, max_images=num_images, tasks=("group",), version=2 if decoys else 1)
    sample = MiniLink(seed=1000 + seed, size=1, config=config)[0]
    return sample.images, sample.instruction, sample.output
