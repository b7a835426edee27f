"""Answering with SAM and the baseline: decoding presets, side-by-side comparison, streaming."""

import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from queue import Queue
from threading import Event, Thread

import torch
from transformers import (
    LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TemperatureLogitsWarper, TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from .domain import DomainDetector, DomainReport
from .loading import LoadedSam
from .modeling import SamVisualTokens
from .processing import PromptError, check_image_markers

MODES = ("compare", "sam", "baseline")
GENERATION_PRESETS = {
    # no_repeat_ngram_size 3 stops runaway repetition ("shows shows shows …") on questions the model was not trained
    # on, and changes none of the 600 answers of `python -m sam_core.evaluate --decoys --size 300 --no-meteor`.
    "greedy": {"do_sample": False, "num_beams": 1, "max_new_tokens": 64, "no_repeat_ngram_size": 3},
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
    """Answers by mode ("sam", "baseline") plus the shared extraction time, the visual tokens and which images look
    unlike what the model was trained on."""

    answers: dict[str, Answer]
    extraction_seconds: float
    visual: dict[str, SamVisualTokens]
    domain: DomainReport | None = None

    def to_dict(self) -> dict:
        return {
            "answers": {mode: {**asdict(a), "tokens_per_second": a.tokens_per_second} for mode, a in self.answers.items()},
            "extraction_seconds": self.extraction_seconds,
            **domain_fields(self.domain),
        }


def domain_fields(domain: DomainReport | None) -> dict:
    """The JSON fields every result carries: `out_of_domain` (1-based image numbers) and the full report."""
    return {"out_of_domain": domain.out_of_domain if domain else [], "domain": domain.to_dict() if domain else None}


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


class AnswerDeadline(StoppingCriteria):
    """Stops each generate call `seconds` after it started (a new call restarts the clock) and remembers, per
    call, whether it had to, so the caller can say which answers were cut short. Pass it as
    `stopping_criteria=StoppingCriteriaList([deadline])`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cut_short: list[bool] = []  # one entry per generate call, in order
        self.restart()

    def restart(self) -> None:
        self.start, self.length = time.monotonic(), 0
        self.cut_short.append(False)

    @property
    def reached(self) -> bool:
        return any(self.cut_short)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if input_ids.shape[1] <= self.length:  # a shorter sequence than last step: the next call began
            self.restart()
        self.length = input_ids.shape[1]
        self.cut_short[-1] = self.cut_short[-1] or time.monotonic() - self.start >= self.seconds
        return torch.full((input_ids.shape[0],), self.cut_short[-1], dtype=torch.bool, device=input_ids.device)


class SeededSampling(LogitsProcessor):
    """Multinomial sampling from a generator of its own. transformers samples from torch's global random state,
    which every thread shares: another request generating at the same time, or anything else drawing random
    numbers, would change this answer. Used with `do_sample=False` as the last processor: it applies the sampling
    warpers (temperature, top-k, top-p) as transformers does, draws the token, and leaves greedy selection only
    that token to pick. One instance per generate call, so each call starts from `seed`."""

    def __init__(self, seed: int | None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        self.seed = seed
        self.generator: torch.Generator | None = None  # made on the first step, on the device of the scores
        self.warpers = LogitsProcessorList(
            ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
            + ([TopKLogitsWarper(top_k)] if top_k else [])
            + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generator is None:
            self.generator = torch.Generator(scores.device)
            if self.seed is None:
                self.generator.seed()  # fresh entropy, still nobody else's state
            else:
                self.generator.manual_seed(self.seed)
        probabilities = torch.softmax(self.warpers(input_ids, scores), dim=-1)  # (B, V)
        tokens = torch.multinomial(probabilities, num_samples=1, generator=self.generator)  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def seeded_settings(model, settings: dict, seed: int | None) -> dict:
    """Generate-call settings whose sampling (if any) draws from a generator seeded with `seed` (SeededSampling),
    with transformers' defaults and the model's generation config for what `settings` leaves unset; greedy and
    beam settings are returned unchanged."""
    if not settings.get("do_sample"):
        return settings
    if settings.get("num_beams", 1) > 1:
        raise ValueError("sampling is offered with num_beams=1 only")
    settings = dict(settings)

    def chosen(name: str, default):  # the request's value, else the model's generation config, else transformers'
        for value in (settings.pop(name, None), getattr(model.generation_config, name, None)):
            if value is not None:
                return value
        return default

    sampler = SeededSampling(seed, chosen("temperature", 1.0), chosen("top_k", 50), chosen("top_p", 1.0))
    settings["logits_processor"] = LogitsProcessorList([*settings.get("logits_processor", []), sampler])
    settings["do_sample"] = False
    return settings


class StopWhenSet(StoppingCriteria):
    """Stops a generation at its next step once `event` is set: the request that wanted it has ended."""

    def __init__(self):
        self.event = Event()

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def answer_groups(mode: str, settings: dict) -> list[list[str]]:
    """The modes each generate call answers: a comparison under deterministic decoding is one batch of two;
    sampling decodes the modes in turn from the same seed, so equal visual tokens give equal answers."""
    modes = ["sam", "baseline"] if mode == "compare" else [mode]
    return [modes] if mode == "compare" and not settings.get("do_sample") else [[name] for name in modes]


class SamPipeline:
    """Images + prompt in, answers out, for one loaded model serving SAM and the baseline."""

    def __init__(self, loaded: LoadedSam):
        self.model = loaded.model
        self.processor = loaded.processor
        self.info = loaded.info

    @property
    def device(self) -> torch.device:
        return self.model.query_tokens.device

    def check_domain(self, images: Sequence) -> DomainReport:
        """Which images look unlike what the loaded model was trained on (sam_core/domain.py)."""
        return DomainDetector.for_model(self.info).check(images)

    def check_prompt(self, prompt: str, num_images: int, max_new_tokens: int, limit: int | None = None) -> None:
        """Refuse, with a message that says what to change, a prompt whose `{image#k}` markers name a missing
        image or that does not fit: at most `limit` LLM tokens, and the N·K visual tokens + prompt + new tokens
        must fit the language model's positions (the Q-Former reads only the last 128 tokens of it, as the
        authors' model does)."""
        check_image_markers(prompt, num_images)
        tokens = len(self.processor.tokenizer(prompt)["input_ids"])
        positions = getattr(self.model.config.text_config, "max_position_embeddings", None)
        room = None if positions is None else positions - num_images * self.processor.num_query_tokens - max_new_tokens
        if room is not None and room < 1:
            raise PromptError(
                f"{num_images} images and {max_new_tokens} new tokens do not fit this model's {positions} positions: "
                "use fewer images or fewer new tokens"
            )
        allowed = min((value for value in (limit, room) if value is not None), default=None)
        if allowed is not None and tokens > allowed:
            raise PromptError(
                f"the prompt is too long: {tokens} tokens, at most {allowed} with {num_images} images and "
                f"{max_new_tokens} new tokens; shorten it"
            )

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
        answers = {}
        for names in answer_groups(mode, settings):
            start = time.perf_counter()
            new_ids = generate_modes(self.model, inputs, [visual[name] for name in names], **seeded_settings(self.model, settings, seed))
            seconds = time.perf_counter() - start
            rows = new_ids.reshape(len(names), -1, new_ids.shape[-1])[:, 0]  # first sequence of each mode
            for name, text, ids in zip(names, self.processor.decode(rows), rows):
                answers[name] = Answer(name, text, count_new_tokens(ids, self.processor.tokenizer.pad_token_id), seconds)
        return GenerationResult(answers, extraction_seconds, visual, self.check_domain(images))

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
        texts = dict.fromkeys(visual, "")
        for names in answer_groups(mode, settings):
            streamer = BatchTextStreamer(self.processor.tokenizer, len(names))
            generation = self._streamed_generation(inputs, [visual[n] for n in names], seed, streamer, settings)
            with closing(streamer.run(generation)) as pieces:  # closing this stream stops and joins the generation
                for texts_so_far in pieces:
                    texts.update(zip(names, texts_so_far))
                    yield dict(texts)

    def _streamed_generation(self, inputs, visual, seed, streamer, settings):
        settings = seeded_settings(self.model, settings, seed)
        settings["stopping_criteria"] = StoppingCriteriaList([*settings.get("stopping_criteria", []), streamer.stop])

        def run():
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
        new_tokens_only=True,
        **settings,
    )


class BatchTextStreamer(BaseStreamer):
    """A transformers streamer for a batch of answers: collects each row's new tokens and hands out the decoded
    texts as they grow (TextIteratorStreamer takes one row only). Its generation must also get `stop` among its
    stopping criteria: a reader that stops reading early ends the generation with it."""

    def __init__(self, tokenizer, rows: int, timeout: float = 600):
        self.tokenizer, self.timeout = tokenizer, timeout
        self.ids = [[] for _ in range(rows)]
        self.prompt_skipped = False
        self.queue = Queue()
        self.stop = StopWhenSet()

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
        """Run `generation` (which feeds this streamer) in a thread; yield the texts; re-raise its error here.
        However the reading ends (done, closed by a client that left, an error), the generation has stopped and
        its thread has ended when this returns: nothing of this request runs on after it (and after the model
        lock its caller holds)."""
        failure = []

        def guarded():
            try:
                generation()
            except Exception as error:  # surfaced in the caller's thread below
                failure.append(error)
                self.end()

        worker = Thread(target=guarded, daemon=True)
        worker.start()
        try:
            last = None
            while (texts := self.queue.get(timeout=self.timeout)) is not None:
                if texts != last:
                    last = texts
                    yield texts
        finally:
            self.stop.event.set()
            worker.join()
        if failure:
            raise failure[0]


def count_new_tokens(ids: torch.Tensor, pad_token_id: int | None) -> int:
    return int((ids != pad_token_id).sum()) if pad_token_id is not None else int(ids.numel())
