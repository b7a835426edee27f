"""App configuration from environment variables, with defaults for a CPU laptop and for GPU Spaces."""

import os
from dataclasses import dataclass

import torch

MAX_FILE_BYTES = 20 * 2**20  # Gradio refuses a larger uploaded file
PROMPT_CHARACTERS_PER_TOKEN = 16  # a generous cap on characters per token: longer prompts are refused before tokenising

def _env_number(name: str, default, parse, kind: str):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"{name} must be {kind}, got {value!r}") from None


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "a whole number")


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


@dataclass(frozen=True)
class AppSettings:
    """Which model to serve and the limits every request is held to."""

    model: str | None  # None: the embedded default
    adapter: str | None
    quantization: str
    device: str
    max_images: int
    max_pixels: int  # larger uploads are downscaled to this many pixels; files decoding to 16× more are refused
    max_new_tokens: int
    max_prompt_tokens: int  # LLM tokens of the whole prompt (question, or storytelling captions and question)
    request_timeout: float  # seconds of answering per request (half per answer where the two are decoded in turn)
    concurrency: int
    queue_size: int
    host: str
    port: int
    torch_threads: int | None  # None: torch's default (one per core)
    max_eval_samples: int  # samples per dataset evaluation (the "Evaluate a dataset" tab and /evaluate)
    eval_time_budget: float  # seconds per dataset evaluation; it stops there with the samples done so far
    cache_ttl: int = 3600  # seconds an upload or a report stays in Gradio's cache

    @property
    def max_upload_bytes(self) -> int:
        """The most one upload request may carry: a request's worth of files, and room for the form around them."""
        return self.max_images * MAX_FILE_BYTES + 2**20

    @property
    def max_prompt_chars(self) -> int:
        """Prompts longer than this many characters are refused before they are tokenised."""
        return PROMPT_CHARACTERS_PER_TOKEN * self.max_prompt_tokens

    @classmethod
    def from_env(cls) -> "AppSettings":
        gpu = torch.cuda.is_available()
        on_spaces = bool(os.environ.get("SPACE_ID"))
        return cls(
            model=os.environ.get("SAM_MODEL") or None,
            adapter=os.environ.get("SAM_ADAPTER") or None,
            quantization=os.environ.get("SAM_QUANTIZATION", "auto"),
            device=os.environ.get("SAM_DEVICE", "auto"),
            max_images=_env_int("SAM_MAX_IMAGES", 8 if gpu else 6),
            max_pixels=_env_int("SAM_MAX_PIXELS", 1024 * 1024),
            max_new_tokens=_env_int("SAM_MAX_NEW_TOKENS", 256 if gpu else 64),
            max_prompt_tokens=_env_int("SAM_MAX_PROMPT_TOKENS", 1024 if gpu else 512),
            request_timeout=_env_float("SAM_REQUEST_TIMEOUT", 300.0 if gpu else 120.0),
            concurrency=_env_int("SAM_CONCURRENCY", 1 if gpu else 2),
            queue_size=_env_int("SAM_QUEUE_SIZE", 32),
            host=os.environ.get("SAM_HOST", "0.0.0.0" if on_spaces else "127.0.0.1"),
            port=_env_int("SAM_PORT", _env_int("GRADIO_SERVER_PORT", 7860)),
            torch_threads=_env_int("SAM_TORCH_THREADS", 0 if gpu or os.environ.get("SAM_MODEL") else 1) or None,
            cache_ttl=_env_int("SAM_CACHE_TTL", 3600),
            max_eval_samples=_env_int("SAM_MAX_EVAL_SAMPLES", 2000 if gpu else 500),
            eval_time_budget=_env_float("SAM_EVAL_TIME_BUDGET", 1800.0 if gpu else 600.0),
        )
