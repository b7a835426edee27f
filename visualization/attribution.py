"""Token attributions with captum: how much the answer depends on each image, each patch and each prompt word.

All three are perturbation attributions (captum's FeatureAblation): no gradients, so they run in inference
memory even on the 4-bit 7B model, and several perturbations go through the model as one batch
(`perturbations_per_eval`).

Target: the log-probability of every answer token under teacher forcing. One forward pass over prompt + answer
gives all T token log-probs, so the same perturbation passes give the attribution of the whole answer (row 0,
the sum of the token rows) and of each token (rows 1..T). Score = log p(as answered) − log p(perturbed):
positive means the ablated part supports the answer. Each mode explains its own answer.

What captum ablates is a gate over interpretable parts (1 = present, 0 = replaced), which the forward function
turns into model inputs:
- images, gate (1, N): image j's patch features F_j (CLS included) become the reference and the extraction is
  re-run. For SAM the ablation therefore goes through the guidance: every other image's context (and so its
  tokens) changes too, and image j's score includes that cross-image effect. For the baseline only image j's
  tokens change. (Ablating image j's visual tokens instead would hide exactly what SAM adds.)
- patches, gate (1, N, G, G) grouped in window × window blocks: a block's patch features become the
  reference's at the same positions (CLS kept). Feature-level occlusion shows how the Q-Former and the LLM
  read each patch position; it does not re-run the ViT without those pixels.
- prompt words, gate (1, W) over the whitespace-separated words: a word is removed by masking its tokens out
  of attention in the LLM prompt and in the Q-Former instruction (which steers the extraction).

Reference for replaced patch features: "blank" (default) is what the vision encoder makes of a uniform image
at the processor's mean colour (all-zero normalised pixels, i.e. no content); "zeros"; "mean" (the set's mean
patch feature).
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import FeatureAblation
from PIL import Image

from sam_core.generation import SamPipeline
from sam_core.modeling import SamForConditionalGeneration
from sam_core.processing import QFORMER_MAX_TOKENS

from .capture import MODES, Capture
from .common import (
    BASELINE_COLOUR, DPI, SAM_COLOUR, SIGNED_CMAP, WIDE, Canvas, Layout, MapRow, Progress, Scale, grid_side, matrix_image,
    numpy, overlay_figure, symmetric_limit, to_rgb_bytes, wrapped,
)

REFERENCES = ("blank", "zeros", "mean")
# Default patch window: at most 4 × 4 occlusion cells per image (2 × 2 patches of the embedded model's 8 × 8 grid,
# 4 × 4 of the full model's 16 × 16), about what the maps can resolve: MiniLINK places its objects on a 3 × 3 grid,
# and each halving of the window quadruples the passes. `default_window` gives it; a caller may pass a finer one.
MAX_CELLS = 4


@dataclass
class ImageAttribution:
    """scores (1 + T, N): row 0 the whole answer, row t the t-th answer token; log_probs (1 + T,) as answered."""

    mode: str
    tokens: list[str]
    log_probs: np.ndarray
    scores: np.ndarray
    reference: str


@dataclass
class PatchAttribution:
    """scores (1 + T, N, G, G): each patch holds the score of occluding its window × window block."""

    mode: str
    tokens: list[str]
    log_probs: np.ndarray
    scores: np.ndarray
    window: int
    reference: str

    def maps(self, token: int | None = None) -> np.ndarray:
        """(N, G, G) for the whole answer (None) or one answer token."""
        return self.scores[0 if token is None else token + 1]


@dataclass
class WordAttribution:
    """scores (1 + T, W) per prompt word; pieces: each word with the whitespace after it (they join to the prompt)."""

    mode: str
    tokens: list[str]
    log_probs: np.ndarray
    words: list[str]
    pieces: list[str]
    scores: np.ndarray



class AnswerScorer:
    """Teacher-forced log-probabilities of one mode's answer under a batch of perturbed inputs."""

    def __init__(self, model: SamForConditionalGeneration, capture: Capture, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        inputs = capture.inputs
        self.model = model
        self.guidance = mode == "sam"
        self.features = capture.visual[mode].patch_features  # (1, N, P, D)
        self.answer = capture.answer_ids[mode].to(self.features.device)  # (T,)
        if self.answer.numel() == 0:
            raise ValueError("the answer is empty: there is nothing to attribute")
        self.qformer_ids = inputs["qformer_input_ids"]  # (1, Tq)
        self.qformer_mask = inputs["qformer_attention_mask"]  # (1, Tq)
        self.prompt_ids = inputs["input_ids"]  # (1, L): [images][pad][<s> prompt]
        self.encoder_decoder = model.language_model.config.is_encoder_decoder
        if self.encoder_decoder:
            start = torch.tensor([model.language_model.config.decoder_start_token_id], device=self.answer.device)
            self.decoder_ids = torch.cat([start, self.answer[:-1]])[None]  # (1, T)
            self.attention_mask = inputs["attention_mask"]  # (1, L)
        else:  # the answer but its last token follows the prompt: position t − 1 predicts answer token t
            answer_mask = torch.ones_like(self.answer[None, :-1])
            self.attention_mask = torch.cat([inputs["attention_mask"], answer_mask], dim=1)  # (1, L + T − 1)

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, qformer_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """features (R, N, P, D), masks (R, Tq) and (R, L') → (R, 1 + T): the answer's log-prob, then per token.

        The answer's ids are embedded as plain tokens, as during generation (they may even be placeholder ids)."""
        model, rows, num_tokens = self.model, features.shape[0], self.answer.numel()
        visual = model.extract_visual_tokens(
            self.qformer_ids.expand(rows, -1), qformer_mask, patch_features=features, guidance=self.guidance
        )
        prompt_embeds = model.merge_visual_tokens(self.prompt_ids.expand(rows, -1), visual.visual_tokens)  # (R, L, d_llm)
        if self.encoder_decoder:
            logits = model.language_model(
                inputs_embeds=prompt_embeds, attention_mask=attention_mask, decoder_input_ids=self.decoder_ids.expand(rows, -1)
            ).logits  # (R, T, V)
        else:
            answer_embeds = model.get_input_embeddings()(self.answer[None, :-1]).to(prompt_embeds.dtype)  # (1, T − 1, d_llm)
            embeds = torch.cat([prompt_embeds, answer_embeds.expand(rows, -1, -1)], dim=1)
            logits = model.language_model(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=num_tokens).logits
        targets = self.answer.expand(rows, -1)[..., None]  # (R, T, 1)
        token_log_probs = logits[:, -num_tokens:].float().log_softmax(dim=-1).gather(-1, targets).squeeze(-1)  # (R, T)
        return torch.cat([token_log_probs.sum(dim=1, keepdim=True), token_log_probs], dim=1)

    def masks(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.qformer_mask.expand(rows, -1), self.attention_mask.expand(rows, -1)

    def gated_features(self, gate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """gate (R, N, P) in {0, 1} → (R, N, P, D) features with the gated-off patches set to the reference."""
        gate = gate[..., None].to(self.features.dtype)
        return self.features * gate + reference * (1 - gate)


@torch.no_grad()
def reference_features(model: SamForConditionalGeneration, capture: Capture, mode: str, reference: str) -> torch.Tensor:
    """Patch features that stand in for ablated ones, broadcastable to (1, N, P, D)."""
    features = capture.visual[mode].patch_features  # (1, N, P, D)
    if reference == "blank":
        blank = torch.zeros_like(capture.inputs["pixel_values"][:, :1])  # (1, 1, 3, H, W): the mean colour
        return model.encode_images(blank).to(features.dtype)  # (1, 1, P, D)
    if reference == "zeros":
        return torch.zeros_like(features[:, :1])  # (1, 1, P, D)
    if reference == "mean":
        return features.mean(dim=(1, 2), keepdim=True)  # (1, 1, 1, D)
    raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


def ablate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    gate: torch.Tensor,
    feature_mask: torch.Tensor,
    perturbations_per_eval: int,
    progress: Progress | None,
    message: str,
) -> tuple[np.ndarray, np.ndarray]:
    """captum FeatureAblation over a gate of ones (baseline 0 = ablated) → (scores (1 + T, *gate.shape[1:]),
    log-probs (1 + T,) of the unperturbed input, which is captum's first evaluation)."""
    total = 1 + math.ceil((int(feature_mask.max()) + 1) / perturbations_per_eval)
    outputs = []  # (R, 1 + T) per forward pass; the first is the unperturbed input

    def counted(batch_gate: torch.Tensor) -> torch.Tensor:
        outputs.append(forward(batch_gate))
        if progress is not None:
            progress(min(len(outputs) / total, 1.0), f"{message} ({len(outputs)}/{total} passes)")
        return outputs[-1]

    scores = FeatureAblation(counted).attribute(
        gate, baselines=0.0, feature_mask=feature_mask, perturbations_per_eval=perturbations_per_eval
    )
    return numpy(scores), numpy(outputs[0][0])


def image_attribution(
    pipeline: SamPipeline,
    capture: Capture,
    mode: str = "sam",
    reference: str = "blank",
    perturbations_per_eval: int = 8,
    progress: Progress | None = None,
) -> ImageAttribution:
    """Each image's contribution to the answer of `mode`: ablate its patch features and re-extract (for SAM,
    through the guidance)."""
    scorer = AnswerScorer(pipeline.model, capture, mode)
    replacement = reference_features(pipeline.model, capture, mode, reference)
    num_images, num_patches = scorer.features.shape[1:3]

    def forward(gate: torch.Tensor) -> torch.Tensor:  # gate (R, N)
        patch_gate = gate[:, :, None].expand(-1, -1, num_patches)  # (R, N, P)
        return scorer(scorer.gated_features(patch_gate, replacement), *scorer.masks(gate.shape[0]))

    device = scorer.features.device
    gate = torch.ones(1, num_images, device=device)
    feature_mask = torch.arange(num_images, device=device)[None]  # (1, N): one feature per image
    scores, log_probs = ablate(forward, gate, feature_mask, perturbations_per_eval, progress, f"{mode}: ablating images")
    return ImageAttribution(mode, capture.tokens[mode], log_probs, scores, reference)


def default_window(side: int) -> int:
    """The patch window for a side × side grid: the smallest giving at most MAX_CELLS × MAX_CELLS cells."""
    return max(1, math.ceil(side / MAX_CELLS))


def patch_attribution(
    pipeline: SamPipeline,
    capture: Capture,
    mode: str = "sam",
    window: int | None = None,
    reference: str = "blank",
    perturbations_per_eval: int = 32,
    progress: Progress | None = None,
) -> PatchAttribution:
    """A heatmap per image: occlude window × window blocks of patch features (default: `default_window`)."""
    scorer = AnswerScorer(pipeline.model, capture, mode)
    replacement = reference_features(pipeline.model, capture, mode, reference)
    num_images, num_patches = scorer.features.shape[1:3]
    side = grid_side(num_patches)
    window = window or default_window(side)
    if not 1 <= window <= side:
        raise ValueError(f"window must lie in [1, {side}] for a {side}×{side} patch grid, got {window}")

    def forward(gate: torch.Tensor) -> torch.Tensor:  # gate (R, N, G, G)
        cls = torch.ones_like(gate[:, :, :1, 0])  # (R, N, 1): CLS is never occluded
        patch_gate = torch.cat([cls, gate.flatten(2)], dim=2)  # (R, N, P)
        return scorer(scorer.gated_features(patch_gate, replacement), *scorer.masks(gate.shape[0]))

    device = scorer.features.device
    cells = math.ceil(side / window)
    block = torch.arange(side, device=device) // window  # (G,) block row (or column) of each patch row
    within = block[:, None] * cells + block[None, :]  # (G, G)
    feature_mask = (torch.arange(num_images, device=device)[:, None, None] * cells * cells + within)[None]  # (1, N, G, G)
    gate = torch.ones(1, num_images, side, side, device=device)
    scores, log_probs = ablate(forward, gate, feature_mask, perturbations_per_eval, progress, f"{mode}: occluding patches")
    return PatchAttribution(mode, capture.tokens[mode], log_probs, scores, window, reference)


def word_attribution(
    pipeline: SamPipeline,
    capture: Capture,
    mode: str = "sam",
    perturbations_per_eval: int = 16,
    progress: Progress | None = None,
) -> WordAttribution:
    """Signed score per prompt word: remove the word from the LLM prompt and the Q-Former instruction."""
    scorer = AnswerScorer(pipeline.model, capture, mode)
    processor = pipeline.processor
    prompt = capture.prompt
    spans = [(match.start(), match.end()) for match in re.finditer(r"\S+", prompt)]
    if not spans:
        raise ValueError("the prompt has no words to attribute")
    device = scorer.features.device
    prompt_ids = capture.inputs["input_ids"][0].tolist()
    llm_words = token_words(processor.tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True), spans)
    if prompt_ids[len(prompt_ids) - len(llm_words.ids):] != llm_words.ids:
        raise ValueError("the prompt's tokens do not match the captured input ids")
    qformer = processor.qformer_tokenizer(prompt, truncation=True, max_length=QFORMER_MAX_TOKENS, return_offsets_mapping=True)
    qformer_words = token_words(qformer, spans)
    if capture.inputs["qformer_input_ids"][0].tolist() != qformer_words.ids:
        raise ValueError("the instruction's tokens do not match the captured Q-Former ids")
    # Word index + 1 of every position (0 = not a word: images, padding, special tokens, the answer).
    llm_index = torch.zeros(scorer.attention_mask.shape[1], dtype=torch.long)
    start = len(prompt_ids) - len(llm_words.ids)
    llm_index[start : len(prompt_ids)] = torch.tensor(llm_words.index) + 1
    llm_index, qformer_index = llm_index.to(device), (torch.tensor(qformer_words.index) + 1).to(device)

    def forward(gate: torch.Tensor) -> torch.Tensor:  # gate (R, W)
        rows = gate.shape[0]
        keep = torch.cat([torch.ones_like(gate[:, :1]), gate], dim=1).long()  # (R, 1 + W)
        qformer_mask, attention_mask = scorer.masks(rows)
        features = scorer.features.expand(rows, -1, -1, -1)
        return scorer(features, qformer_mask * keep[:, qformer_index], attention_mask * keep[:, llm_index])

    gate = torch.ones(1, len(spans), device=device)
    feature_mask = torch.arange(len(spans), device=device)[None]
    scores, log_probs = ablate(forward, gate, feature_mask, perturbations_per_eval, progress, f"{mode}: removing prompt words")
    words = [prompt[a:b] for a, b in spans]
    pieces = [prompt[a : (spans[i + 1][0] if i + 1 < len(spans) else len(prompt))] for i, (a, _) in enumerate(spans)]
    return WordAttribution(mode, capture.tokens[mode], log_probs, words, pieces, scores)


@dataclass(frozen=True)
class TokenChoice:
    """Which answer token each mode's attribution shows. `sam`: SAM's token (0-based; None: the whole answer);
    `baseline`: the baseline's token for the same word at the same occurrence (its second "circle" for SAM's
    second), None for the whole answer or where the baseline's answer has no such word (`baseline_missing`)."""

    sam: int | None = None
    baseline: int | None = None
    word: str | None = None

    @classmethod
    def of(cls, sam_tokens: list[str], baseline_tokens: list[str], token: int | None) -> "TokenChoice":
        if token is None:
            return cls()
        word = sam_tokens[token]
        occurrence = sam_tokens[:token].count(word)
        positions = [index for index, label in enumerate(baseline_tokens) if label == word]
        return cls(token, positions[occurrence] if occurrence < len(positions) else None, word)

    @property
    def baseline_missing(self) -> bool:
        return self.word is not None and self.baseline is None

    def label(self, mode: str) -> str:
        """What `mode`'s attribution is of, e.g. 'token 6 “diamond”', 'the whole answer'."""
        token = self.sam if mode == "sam" else self.baseline
        if self.word is None:
            return "the whole answer"
        if token is None:
            return f"no “{self.word}” in its answer"
        return f"token {token + 1} “{self.word}”"

    def row(self, mode: str) -> int | None:
        """The attribution row (0: whole answer, t + 1: token t), None where the mode has no such token."""
        if self.word is None:
            return 0
        token = self.sam if mode == "sam" else self.baseline
        return None if token is None else token + 1


def token_axis_labels(tokens: list[str]) -> list[str]:
    return [f"{index + 1} {token}" for index, token in enumerate(tokens)]


def plot_image_attribution(
    sam: ImageAttribution, baseline: ImageAttribution, choice: TokenChoice = TokenChoice(), layout: Layout = WIDE
) -> Canvas:
    """Bars: each image's score for the chosen token (or the whole answer), SAM next to the baseline; below, per
    mode, the token × image scores on one shared diverging scale with the chosen token's row outlined. Each mode
    explains its own answer, so the token rows differ. Wide: the two token maps side by side; narrow: stacked."""
    num_images = sam.scores.shape[1]
    narrow, width, pt = layout.narrow, layout.width * DPI, DPI / 72
    word = "the answer" if choice.word is None else f"“{choice.word}”"
    title = wrapped(f"How much {word} depends on each image (drop in log-probability when the image is blanked)", layout)
    line = layout.tick * pt * 1.5
    shown = [(mode, attribution) for mode, attribution in (("sam", sam), ("baseline", baseline)) if choice.row(mode) is not None]
    legend = [(SAM_COLOUR if mode == "sam" else BASELINE_COLOUR, f"{'SAM' if mode == 'sam' else 'baseline'}: {choice.label(mode)}")
              for mode, _ in shown]
    if choice.baseline_missing:
        legend.append((BASELINE_COLOUR, f"baseline: no “{choice.word}” in its answer"))
    left = 70 if narrow else 110
    plot_width = width - left - 15
    title_height = (title.count("\n") + 1) * layout.title * pt * 1.25 + 12
    legend_height = len(legend) * line + 6
    bars_height = 120 if narrow else 150
    cell_height = round(layout.tick * pt * 1.9)
    label_width = 95 if narrow else 120
    heat_width = (width - label_width - 15) if narrow else (width - 2 * label_width - 40) / 2
    heights = {mode: cell_height * len(attribution.tokens) for mode, attribution in (("sam", sam), ("baseline", baseline))}
    block = line * 2 + 10  # a map's title above it, its image numbers under it
    maps_height = (sum(heights.values()) + 2 * block) if narrow else max(heights.values()) + block
    bar_block = 12 + 8 + layout.tick * pt * 1.4 + layout.label * pt * 1.5 + 10
    canvas = Canvas(width, title_height + legend_height + bars_height + line + 20 + maps_height + 14 + bar_block)
    canvas.text(width / 2, 8, title, layout.title, ha="center", va="top")
    y = title_height
    for index, (colour, text) in enumerate(legend):
        canvas.image(np.full((10, 18, 3), to_rgb_bytes(colour), dtype=np.uint8), left, y + index * line + 2)
        canvas.text(left + 24, y + index * line, text, layout.tick, va="top")
    y += legend_height
    values = [attribution.scores[choice.row(mode)] for mode, attribution in shown]
    limit = symmetric_limit(*values) * 1.15
    colours = [SAM_COLOUR if mode == "sam" else BASELINE_COLOUR for mode, _ in shown]
    canvas.image(bar_chart(values, colours, limit, int(plot_width), bars_height), left, y)
    for value, anchor in ((limit, "top"), (0.0, "center"), (-limit, "bottom")):
        row = y + bars_height / 2 * (1 - value / limit)
        canvas.text(left - 6, row, f"{value:.2g}" if value else "0", layout.tick, ha="right", va=anchor)
    canvas.text(14, y + bars_height / 2, "Δ log p", layout.label, rotation=90, ha="center", va="center")
    group = plot_width / num_images
    for index in range(num_images):
        canvas.text(left + (index + 0.5) * group, y + bars_height + 4, f"image {index + 1}", layout.tick, ha="center", va="top")
    y += bars_height + line + 20
    token_limit = symmetric_limit(sam.scores[1:], baseline.scores[1:])
    scale = Scale(SIGNED_CMAP, -token_limit, token_limit, "Δ log p(token) when the image is blanked")
    cell_width = int(heat_width // num_images)
    for index, (mode, attribution) in enumerate((("sam", sam), ("baseline", baseline))):
        x = label_width if narrow else label_width + index * (heat_width + label_width + 10)
        top = y + line + 4 if not narrow else y + line + 4 + (0 if index == 0 else heights["sam"] + block)
        chosen = choice.sam if mode == "sam" else choice.baseline
        canvas.text(x + cell_width * num_images / 2, top - 4, f"{'SAM' if mode == 'sam' else 'baseline'}: answer token × image",
                    layout.label, ha="center", va="bottom")
        canvas.image(matrix_image(attribution.scores[1:], scale, cell_width, cell_height, chosen), x, top)
        for row, label in enumerate(token_axis_labels(attribution.tokens)):
            canvas.text(x - 5, top + (row + 0.5) * cell_height, label, layout.tick, ha="right", va="center",
                        weight="bold" if row == chosen else "normal")
        for column in range(num_images):
            canvas.text(x + (column + 0.5) * cell_width, top + heights[mode] + 3, str(column + 1), layout.tick, ha="center", va="top")
    canvas.colorbar(scale, 40, canvas.height - bar_block + 2, width - 80, layout)
    return canvas


def bar_chart(values: list[np.ndarray], colours: list[str], limit: float, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: a group of bars per position (one per series, side by side) from a zero line,
    the vertical range ±limit, a light frame."""
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    zero = height // 2
    positions = len(values[0])
    group = width / positions
    bar = group * 0.76 / len(values)
    for series, (row, colour) in enumerate(zip(values, colours)):
        for position, value in enumerate(row):
            x0 = int(position * group + group * 0.12 + series * bar)
            extent = int(round(abs(float(value)) / limit * (height / 2)))
            y0, y1 = (zero - extent, zero) if value >= 0 else (zero, zero + extent)
            image[y0:y1, x0:int(x0 + bar) - 1] = to_rgb_bytes(colour)
    image[zero], image[[0, -1]], image[:, [0, -1]] = 0, 190, 190
    return image


def plot_patch_attribution(
    sam: PatchAttribution, baseline: PatchAttribution, images: list[Image.Image], choice: TokenChoice = TokenChoice(),
    layout: Layout = WIDE,
) -> Canvas:
    """Rows SAM and baseline (left out where the baseline's answer has no chosen word), one column per image,
    on one diverging square-root scale (red: the block supports the answer)."""
    rows = patch_rows(sam, baseline, choice)
    target = "the whole answer" if choice.word is None else f"“{choice.word}”"
    note = f"; the baseline's answer has no “{choice.word}”" if choice.baseline_missing else ""
    title = f"What each {sam.window}×{sam.window}-patch block adds to {target} (red: supports it{note})"
    return overlay_figure(list(images), rows, title, layout)


def patch_rows(sam: PatchAttribution, baseline: PatchAttribution, choice: TokenChoice) -> list[MapRow]:
    """Each mode's maps for the chosen token (none for a mode whose answer lacks the word), on one symmetric
    square-root scale."""
    maps = {mode: attribution.scores[choice.row(mode)] for mode, attribution in (("sam", sam), ("baseline", baseline))
            if choice.row(mode) is not None}
    limit = symmetric_limit(*maps.values())
    scale = Scale(SIGNED_CMAP, -limit, limit, "Δ log p when the block is blanked (square-root scale)", root=True)
    return [MapRow("SAM" if mode == "sam" else "baseline", grids, scale) for mode, grids in maps.items()]


@dataclass
class TokenWords:
    ids: list[int]
    index: list[int]  # word of each token, -1 for tokens outside every word (special tokens)


def token_words(encoding, spans: list[tuple[int, int]]) -> TokenWords:
    """Map each token of a fast-tokenizer encoding with offsets to the word its characters overlap."""
    index = []
    for start, end in encoding["offset_mapping"]:
        hit = next((w for w, (a, b) in enumerate(spans) if start < end and start < b and a < end), -1)
        index.append(hit)
    return TokenWords(list(encoding["input_ids"]), index)
