"""Answering with SAM and the baseline: decoding presets, side-by-side comparison, streaming."""

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from queue import Queue
from threading import Thread

import torch
from transformers.generation.streamers import BaseStreamer

from .loading import LoadedSam
from .modeling import SamVisualTokens

MODES = ("compare", "sam", "baseline")
GENERATION_PRESETS = {
    "greedy": {"do_sample": False, "num_beams": 1, "max_new_tokens": 64},
    "sampling": {"do_sample": True, "num_beams": 1, "top_p": 0.9, "temperature": 1.0, "max_new_tokens": 64},
    "beam": {"do_sample": False, "num_beams": 5, "max_new_tokens": 64},
    # The authors' evaluation settings (DESIGN.md §1): 5 beams, up to 256 tokens, repetition penalty 1.5.
    "paper": {
        "do_sample": False,
        "num_beams": 5,
        "max_new_tokens": 256,
        "min_length": 1,
        "repetition_penalty": 1.5,
        "length_penalty": 1.0,
    },
}


@dataclass
class Answer:
    mode: str
    text: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class GenerationResult:
    """Answers by mode ("sam", "baseline") plus the shared extraction time and the visual tokens."""

    answers: dict[str, Answer]
    extraction_seconds: float
    visual: dict[str, SamVisualTokens]

    def to_dict(self) -> dict:
        return {
            "answers": {mode: {**asdict(a), "tokens_per_second": a.tokens_per_second} for mode, a in self.answers.items()},
            "extraction_seconds": self.extraction_seconds,
        }


def generation_kwargs(preset: str = "greedy", **overrides) -> dict:
    """A preset's decoding settings with explicit overrides (None values ignored)."""
    if preset not in GENERATION_PRESETS:
        raise ValueError(f"unknown decoding preset {preset!r}; choose from {sorted(GENERATION_PRESETS)}")
    settings = dict(GENERATION_PRESETS[preset])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if not settings.get("do_sample"):
        settings.pop("temperature", None)
        settings.pop("top_p", None)
    return settings


class SamPipeline:
    """Images + prompt in, answers out, for one loaded model serving SAM and the baseline."""

    def __init__(self, loaded: LoadedSam):
        self.model = loaded.model
        self.processor = loaded.processor
        self.info = loaded.info

    @property
    def device(self) -> torch.device:
        return self.model.query_tokens.device

    def prepare(self, images: Sequence, prompt: str):
        return self.processor(list(images), prompt).to(self.device)

    @torch.no_grad()
    def extract(self, inputs, mode: str, output_attentions: bool = False) -> dict[str, SamVisualTokens]:
        """Visual tokens for the modes that `mode` needs; compare shares the vision pass and common layers."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        common = {
            "qformer_input_ids": inputs["qformer_input_ids"],
            "qformer_attention_mask": inputs["qformer_attention_mask"],
            "pixel_values": inputs["pixel_values"],
            "output_attentions": output_attentions,
        }
        if mode == "compare":
            sam, baseline = self.model.extract_compare(**common)
            return {"sam": sam, "baseline": baseline}
        return {mode: self.model.extract_visual_tokens(guidance=mode == "sam", **common)}

    @torch.no_grad()
    def generate(
        self, images: Sequence, prompt: str, mode: str = "compare", preset: str = "greedy", seed: int | None = 0, **overrides
    ) -> GenerationResult:
        """Answer with SAM, the baseline, or both (`compare`), each from the same seed.

        Deterministic decoding (greedy, beams) answers both modes of a comparison in one batch of two, which
        costs about one answer's time where decoding is bound by per-step overhead; each answer's `seconds`
        is then the batch's. Sampling runs them one after the other, so equal visual tokens give equal answers.
        """
        settings = generation_kwargs(preset, **overrides)
        inputs = self.prepare(images, prompt)
        start = time.perf_counter()
        visual = self.extract(inputs, mode)
        extraction_seconds = time.perf_counter() - start
        groups = [list(visual)] if mode == "compare" and not settings.get("do_sample") else [[name] for name in visual]
        answers = {}
        for names in groups:
            if seed is not None:
                torch.manual_seed(seed)
            start = time.perf_counter()
            new_ids = generate_modes(self.model, inputs, [visual[name] for name in names], **settings)
            seconds = time.perf_counter() - start
            rows = new_ids.reshape(len(names), -1, new_ids.shape[-1])[:, 0]  # first sequence of each mode
            for name, text, ids in zip(names, self.processor.decode(rows), rows):
                answers[name] = Answer(name, text, count_new_tokens(ids, self.processor.tokenizer.pad_token_id), seconds)
        return GenerationResult(answers, extraction_seconds, visual)

    def stream(
        self, images: Sequence, prompt: str, mode: str = "sam", preset: str = "greedy", seed: int | None = 0, **overrides
    ) -> Iterator[dict[str, str]]:
        """Yield the answers as they grow, {mode: text so far}; greedy or sampling only. "compare" streams both
        answers at once from one extraction: one batch under greedy decoding, one after the other under sampling
        (see `generate`)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        settings = generation_kwargs(preset, **overrides)
        if settings.get("num_beams", 1) > 1:
            raise ValueError("streaming needs greedy or sampling decoding (num_beams=1)")
        inputs = self.prepare(images, prompt)
        visual = self.extract(inputs, mode)
        groups = [list(visual)] if mode == "compare" and not settings.get("do_sample") else [[name] for name in visual]
        texts = dict.fromkeys(visual, "")
        for names in groups:
            streamer = BatchTextStreamer(self.processor.tokenizer, len(names))
            for pieces in streamer.run(self._streamed_generation(inputs, [visual[n] for n in names], seed, streamer, settings)):
                texts.update(zip(names, pieces))
                yield dict(texts)

    def _streamed_generation(self, inputs, visual, seed, streamer, settings):
        def run():
            if seed is not None:
                torch.manual_seed(seed)
            generate_modes(self.model, inputs, visual, streamer=streamer, **settings)

        return run


def generate_modes(model, inputs, visual: list[SamVisualTokens], **settings) -> torch.Tensor:
    """New ids for one sample's prompt under several modes' visual tokens, stacked into one batch:
    (modes · num_return_sequences, new_tokens), mode-major. The prompts are identical, so no padding."""
    copies = len(visual)
    return model.generate(
        input_ids=inputs["input_ids"].repeat(copies, 1),
        attention_mask=inputs["attention_mask"].repeat(copies, 1),
        visual_tokens=torch.cat([tokens.visual_tokens for tokens in visual]),
        **settings,
    )


class BatchTextStreamer(BaseStreamer):
    """A transformers streamer for a batch of answers: collects each row's new tokens and hands out the decoded
    texts as they grow (TextIteratorStreamer takes one row only)."""

    def __init__(self, tokenizer, rows: int, timeout: float = 600):
        self.tokenizer, self.timeout = tokenizer, timeout
        self.ids = [[] for _ in range(rows)]
        self.prompt_skipped = False
        self.queue = Queue()

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_skipped:  # generate hands over the prompt (or the decoder start) first
            self.prompt_skipped = True
            return
        for row, new in zip(self.ids, value.reshape(len(self.ids), -1).tolist()):
            row.extend(new)
        self.queue.put([self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in self.ids])

    def end(self) -> None:
        self.queue.put(None)

    def run(self, generation) -> Iterator[list[str]]:
        """Run `generation` (which feeds this streamer) in a thread; yield the texts; re-raise its error here."""
        failure = []

        def guarded():
            try:
                generation()
            except Exception as error:  # surfaced in the caller's thread below
                failure.append(error)
                self.end()

        worker = Thread(target=guarded, daemon=True)
        worker.start()
        last = None
        while (texts := self.queue.get(timeout=self.timeout)) is not None:
            if texts != last:
                last = texts
                yield texts
        worker.join()
        if failure:
            raise failure[0]


def count_new_tokens(ids: torch.Tensor, pad_token_id: int | None) -> int:
    return int((ids != pad_token_id).sum()) if pad_token_id is not None else int(ids.numel())
