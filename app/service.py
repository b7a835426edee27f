"""What the UI and the API call: validated inputs in, answers out. No Gradio components here."""

import ctypes
import ctypes.util
import gc
import math
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from gradio.utils import get_upload_folder
from PIL import Image
from transformers import StoppingCriteriaList

from sam_core.data import MiniLink, MiniLinkConfig
from sam_core.generation import GENERATION_PRESETS, AnswerDeadline, SamPipeline, answer_groups, generation_kwargs
from sam_core.loading import IDENTITY_WARNING, SamLoadError, load_sam
from sam_core.processing import (
    ImageLoadError, PromptError, group_caption_prompt, load_image, question_prompt, shorten, storytelling_prompt,
)

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


MAX_SEED = 2**64 - 1  # torch generators take seeds up to 2^64 - 1


@dataclass
class Decoding:
    """How to decode, as sent by the page or the API (raw JSON: any type, NaN, null); checked on creation, so a bad
    value is refused with the field's name instead of failing in generation."""

    preset: str = "greedy"
    max_new_tokens: int = 32
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.preset, str) or self.preset not in GENERATION_PRESETS:
            raise InputError(f"Decoding preset must be one of {', '.join(GENERATION_PRESETS)}; got {shorten(repr(self.preset))}.")
        self.max_new_tokens = whole_number(self.max_new_tokens, "Max new tokens", 1, None)
        self.temperature = positive_number(self.temperature, "Temperature")
        self.repetition_penalty = positive_number(self.repetition_penalty, "Repetition penalty")
        self.seed = whole_number(self.seed, "Seed", 0, MAX_SEED)

    def kwargs(self, limit: int) -> dict:
        if self.max_new_tokens > limit:
            raise InputError(f"Max new tokens must be between 1 and {limit}.")
        overrides = {"max_new_tokens": self.max_new_tokens}
        if self.preset != "paper":
            overrides["repetition_penalty"] = self.repetition_penalty
            if self.preset == "sampling":
                overrides["temperature"] = max(self.temperature, 1e-3)
        return generation_kwargs(self.preset, **overrides)


def whole_number(value, field: str, low: int, high: int | None) -> int:
    """`value` as an int in [low, high] (a float is taken when whole: JSON clients send 8.0), or a refusal naming
    the field."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InputError(f"{field} must be a whole number {allowed}; got {shorten(repr(value))}.")
    return value


def positive_number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{field} must be a positive number; got {shorten(repr(value))}.")
    return float(value)


def text_field(value, field: str) -> str:
    """A text input (None: empty), or a refusal for anything else a raw API call can send."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{field} must be text; got {type(value).__name__}.")
    return value


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
        # Decoding uploads runs outside the model lock, for every endpoint: at most SAM_CONCURRENCY at once in all.
        self.decoding = threading.BoundedSemaphore(settings.concurrency)
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
                    "device": "GPU (attached per request)", "dtype": "float16",
                    "adapter": public_text(self.settings.adapter) if self.settings.adapter else None,
                    "context": "?", "exchange_layer": "?", "num_query_tokens": "?",
                    "guidance_identity": self.settings.adapter is None, "precision_note": None, "weights_mb": None,
                    "adapter_tensors": {}, "precision": f"{self.settings.quantization} (loaded with the first request)",
                    "warning": None}
        info = self.loaded.info.to_dict()
        return {**info, "name": public_text(str(info["name"]))}

    def images(self, files) -> list[Image.Image]:
        """Uploaded files → RGB images (downscaled above the pixel limit), or a clear refusal. Files that would
        decode to more than `decode_limit(SAM_MAX_PIXELS)` pixels are refused from their header."""
        self.image_count(files)
        paths = [upload_path(item) for item in files]
        images = []
        try:
            for index, path in enumerate(paths, start=1):
                if not isinstance(path, (str, os.PathLike, Image.Image)):
                    raise InputError(f"Image {index}: not an uploaded file.")
                try:
                    with self.decoding:
                        images.append(load_image(path, self.settings.max_pixels))
                except ImageLoadError as error:
                    raise InputError(f"Image {index}: {error}") from None
        finally:
            release_freed_memory()
        return images

    def image_count(self, files) -> int:
        """How many files a request sends, refused when not a list or not 1 to SAM_MAX_IMAGES of them."""
        if files is not None and not isinstance(files, (list, tuple)):
            raise InputError("Images must be a list of uploaded files.")
        self.check_image_count(len(files or []))
        return len(files)

    def check_image_count(self, count: int) -> None:
        if count == 0:
            raise InputError("Add at least one image.")
        if count > self.settings.max_images:
            raise InputError(f"At most {self.settings.max_images} images per request; got {count}.")

    def caption_lines(self, text) -> list[str]:
        """The API's storytelling captions, one per non-empty line; refused by length before anything is split."""
        text = text_field(text, "Captions")
        self.check_prompt_length(len(text), "Captions")
        return [line for line in text.splitlines() if line.strip()]

    def check_prompt_length(self, characters: int, field: str) -> None:
        """Text too long to fit SAM_MAX_PROMPT_TOKENS tokens is refused by its length alone, before it is cleaned,
        split or tokenised (a 25 MB question costs nothing)."""
        limit = self.settings.max_prompt_chars
        if characters > limit:
            raise InputError(f"{field}: too long ({characters:,} characters, at most {limit:,}); shorten it.")

    def prompt(self, task: str, num_images: int, text: str, captions: list[str], exact_captions: bool = False) -> str:
        """The task's prompt. The UI keeps hidden caption boxes when images are removed, so extra captions are
        dropped there; an API call (`exact_captions`) must send exactly one caption per image but the last."""
        self.check_image_count(num_images)
        if task == "Group captioning":
            return group_caption_prompt(num_images)
        if task == "Storytelling":
            if num_images < 2:
                raise InputError("Storytelling needs at least two images: captions for the first ones, the last to continue.")
            captions = [text_field(caption, f"Caption {index}") for index, caption in enumerate(captions or [], start=1)]
            self.check_prompt_length(sum(len(caption) for caption in captions[: num_images - 1]), "Captions")
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
            raise InputError(f"Unknown task {shorten(repr(task))}; choose one of {', '.join(TASKS)}.")
        text = text_field(text, "Question")
        self.check_prompt_length(len(text), "Question")
        text = question_prompt(text)
        if not text:
            raise InputError("Write a question.")
        return text

    def check_prompt(self, prompt: str, num_images: int, max_new_tokens: int) -> bool:
        """Markers and length against the loaded model (its tokenizer and positions) and SAM_MAX_PROMPT_TOKENS.
        Called before the model lock, so tokenising never holds up another request; False when it could not be
        checked yet (ZeroGPU loads the model inside the first request) and must be, once loaded."""
        if self.pipeline is None:
            return False
        try:
            self.pipeline.check_prompt(prompt, num_images, max_new_tokens, limit=self.settings.max_prompt_tokens)
        except PromptError as error:
            message = str(error)
            raise InputError(message[:1].upper() + message[1:] + ".") from None
        return True

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
        checked = self.check_prompt(prompt, len(images), settings["max_new_tokens"])
        with self.lock, out_of_memory_answer():
            self.ready()
            if not checked:
                self.check_prompt(prompt, len(images), settings["max_new_tokens"])
            state["domain"] = self.pipeline.check_domain(images)  # which images look unlike the model's training images
            start, rss_before = time.perf_counter(), psutil.Process().memory_info().rss
            if settings.get("num_beams", 1) == 1:
                # Closing this generator (a client that left) closes the stream, which stops and joins its generation
                # before the lock is released: nothing of this request runs alongside the next one.
                stream = self.pipeline.stream(images, prompt, mode="compare", seed=decoding.seed, preset="greedy", **settings)
                with closing(stream):
                    for texts in stream:
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
    def explain(self, images: list[Image.Image], prompt: str, decoding: Decoding, progress=None, window: int | None = None):
        """Every analysis view of one compare-mode run (answers, maps and attributions from the same pass), as a
        visualization.Report; `window`: the patch-occlusion block side (None: chosen from the grid). The analysis
        stack is imported on the first call, not at start-up."""
        from visualization import explain

        settings = decoding.kwargs(self.settings.max_new_tokens)
        deadline = AnswerDeadline(self.settings.request_timeout / 2)  # the analysis decodes the two answers in turn
        settings["stopping_criteria"] = StoppingCriteriaList([deadline])
        checked = self.check_prompt(prompt, len(images), settings["max_new_tokens"])
        with self.lock, out_of_memory_answer():
            self.ready()
            if not checked:
                self.check_prompt(prompt, len(images), settings["max_new_tokens"])
            report = explain(self.pipeline, images, prompt, preset="greedy", seed=decoding.seed, progress=progress, window=window,
                             **settings)
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


try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to call
    _malloc_trim = None


def release_freed_memory() -> None:
    """Give the memory freed after decoding back to the system. glibc keeps freed heap memory for reuse: after one
    upload of large images (a 16 M-pixel PNG decodes through ~200 MB) the process stayed that much larger until
    it ended; malloc_trim(0) returns it (tests/test_service.py measures what is held)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def upload_path(item):
    """A gallery item ((path, caption), a file dict, a path or a PIL image) → what load_image reads."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("path") or (item.get("image") or {}).get("path")
    return item


def served_folder(prefix: str) -> Path:
    """A fresh folder in Gradio's cache: files written there are served, and deleted SAM_CACHE_TTL seconds later."""
    cache = Path(get_upload_folder())
    cache.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=cache))


def random_minilink_group(seed: int, num_images: int = 4) -> tuple[list[Image.Image], str, str]:
    """A fresh MiniLINK group-captioning sample: (images, prompt, the reference answer), in the benchmark's default
    version, the one the embedded model was trained and scored in: every image holds the linked object and the
    decoys, so reading each image alone cannot tell which colour goes with which shape."""
    config = MiniLinkConfig(min_images=num_images, max_images=num_images, tasks=("group",))
    sample = MiniLink(seed=1000 + seed, size=1, config=config)[0]
    return sample.images, sample.instruction, sample.output
