"""One compare-mode run whose internals every view reads: the answers and the extraction that produced them.

The guidance weights and Q-Former cross-attention come from the very extraction the answers were generated
from (run with `output_attentions=True`), never from a second pass, so what the views show is what the
answers were conditioned on.
"""

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BatchFeature

from sam_core.domain import DomainReport
from sam_core.generation import Answer, SamPipeline, count_new_tokens, generation_kwargs, seeded_settings
from sam_core.loading import ModelInfo
from sam_core.modeling import SamVisualTokens
from sam_core.processing import load_image

from .common import PANEL_PIXELS, Progress

MODES = ("sam", "baseline")


@dataclass
class Capture:
    """images: the RGB images, in order; inputs: the processor's batch (B = 1) on the model's device;
    visual: per mode, the extraction (with cross-attentions) that fed the answer;
    answer_ids: per mode, (T,) generated ids up to and including the first end-of-sequence token;
    tokens: per mode, a readable label for each answer token; domain: which images look unlike the model's training
    images."""

    images: list[Image.Image]
    prompt: str
    inputs: BatchFeature
    visual: dict[str, SamVisualTokens]
    answer_ids: dict[str, torch.LongTensor]
    answers: dict[str, Answer]
    tokens: dict[str, list[str]]
    info: ModelInfo
    extraction_seconds: float
    domain: DomainReport | None = None

    @property
    def num_images(self) -> int:
        return len(self.images)

    def for_replotting(self, thumbnail_side: int = PANEL_PIXELS) -> "Capture":
        """A copy that keeps what the views re-plot from and drops what only the model needed: images shrunk to
        at most `thumbnail_side` pixels a side, no processor inputs, and per mode only the guidance weights and
        the cross-attention maps (float16), not the visual tokens, query states or patch features."""
        images = []
        for image in self.images:
            small = image.copy()
            small.thumbnail((thumbnail_side, thumbnail_side))
            images.append(small)
        visual = {
            mode: SamVisualTokens(
                visual_tokens=None, query_states=None, qformer_states=None, patch_features=None,
                guidance_weights=tokens.guidance_weights,
                image_cross_attentions=half(tokens.image_cross_attentions),
                context_cross_attentions=half(tokens.context_cross_attentions), guided=tokens.guided,
            )
            for mode, tokens in self.visual.items()
        }
        return dataclasses.replace(self, images=images, inputs=None, visual=visual)


def half(maps: tuple | None) -> tuple | None:
    return None if maps is None else tuple(None if layer is None else layer.half() for layer in maps)


@torch.no_grad()
def capture(
    pipeline: SamPipeline,
    images: Sequence,
    prompt: str,
    preset: str = "greedy",
    seed: int | None = 0,
    modes: Sequence[str] = MODES,
    progress: Progress | None = None,
    **overrides,
) -> Capture:
    """Answer with SAM and the baseline (or one of them) from one shared extraction that keeps its attention maps."""
    if not modes or any(mode not in MODES for mode in modes):
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes!r}")
    settings = generation_kwargs(preset, **overrides)
    rgb = [load_image(image) for image in images]
    inputs = pipeline.prepare(rgb, prompt)
    start = time.perf_counter()
    visual = pipeline.extract(inputs, "compare" if len(set(modes)) > 1 else modes[0], output_attentions=True)
    extraction_seconds = time.perf_counter() - start
    tokenizer = pipeline.processor.tokenizer
    answer_ids, answers, tokens = {}, {}, {}
    for index, mode in enumerate(visual):
        if progress is not None:
            progress(index / len(visual), f"generating the {mode} answer")
        start = time.perf_counter()
        new_ids = pipeline.model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], visual=visual[mode],
            new_tokens_only=True, **seeded_settings(pipeline.model, settings, seed),
        )
        seconds = time.perf_counter() - start
        ids = until_end(new_ids[0], tokenizer.eos_token_id)
        answer_ids[mode] = ids
        text = pipeline.processor.decode(ids[None])[0]
        answers[mode] = Answer(mode, text, count_new_tokens(ids, tokenizer.pad_token_id), seconds)
        tokens[mode] = token_labels(tokenizer, ids.tolist())
    if progress is not None:
        progress(1.0, "answers ready")
    return Capture(rgb, prompt, inputs, visual, answer_ids, answers, tokens, pipeline.info, extraction_seconds,
                   pipeline.check_domain(rgb))


def until_end(ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """(T,) ids cut after the first end-of-sequence token (kept: its probability is part of the answer's)."""
    if eos_token_id is None:
        return ids
    ends = (ids == eos_token_id).nonzero()
    return ids[: int(ends[0]) + 1] if len(ends) else ids


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """One short label per token for axis ticks; whitespace-only pieces are shown quoted."""
    labels = []
    for token_id in ids:
        text = tokenizer.decode([token_id])
        labels.append(text.strip() or repr(text))
    return labels
