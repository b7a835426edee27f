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
from matplotlib.figure import Figure
from PIL import Image

from sam_core.generation import SamPipeline
from sam_core.modeling import SamForConditionalGeneration
from sam_core.processing import QFORMER_MAX_TOKENS

from .capture import MODES, Capture
from .common import (
    BASELINE_COLOUR, SAM_COLOUR, SIGNED_CMAP, Progress, add_colorbar, grid_side, new_figure, new_grid, numpy,
    overlay_row, panel_labels, row_height, square_image, symmetric_limit,
)

REFERENCES = ("blank", "zeros", "mean")
MAX_CELLS = 8  # default patch window: at most 8 × 8 occlusion cells per image (2 × 2 patches at full size)


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

    def highlighted(self, token: int | None = None, limit: float | None = None) -> list[tuple[str, float]]:
        """(text, score in [-1, 1]) pairs for gradio's HighlightedText, for the whole answer (None) or one token,
        divided by `limit` (default: the row's largest |score|; pass one limit to compare SAM and baseline)."""
        row = self.scores[0 if token is None else token + 1]
        limit = limit or float(np.abs(row).max()) or 1.0
        return [(piece, float(np.clip(value / limit, -1.0, 1.0))) for piece, value in zip(self.pieces, row)]


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


def patch_attribution(
    pipeline: SamPipeline,
    capture: Capture,
    mode: str = "sam",
    window: int | None = None,
    reference: str = "blank",
    perturbations_per_eval: int = 32,
    progress: Progress | None = None,
) -> PatchAttribution:
    """A heatmap per image: occlude window × window blocks of patch features (default: at most 8 × 8 blocks)."""
    scorer = AnswerScorer(pipeline.model, capture, mode)
    replacement = reference_features(pipeline.model, capture, mode, reference)
    num_images, num_patches = scorer.features.shape[1:3]
    side = grid_side(num_patches)
    window = window or max(1, math.ceil(side / MAX_CELLS))
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


def plot_image_attribution(sam: ImageAttribution, baseline: ImageAttribution) -> Figure:
    """The whole answer's score per image, SAM next to the baseline (bars), and per mode the token × image
    scores on one shared diverging scale. Each mode explains its own answer, so the token rows differ."""
    num_images = sam.scores.shape[1]
    longest = max(len(sam.tokens), len(baseline.tokens))
    figure, grid = new_grid([1.1, max(0.6, 0.17 * longest)], 2, margins=(0.85, 0.85, 0.55, 0.4), hspace=0.3, wspace=0.6)
    bars = figure.add_subplot(grid[0, :])
    positions = np.arange(num_images)
    for offset, (title, attribution, colour) in zip((-0.2, 0.2), (("SAM", sam, SAM_COLOUR), ("baseline", baseline, BASELINE_COLOUR))):
        bars.bar(positions + offset, attribution.scores[0], width=0.38, color=colour, label=title)
    limit = symmetric_limit(sam.scores[0], baseline.scores[0]) * 1.15
    bars.axhline(0.0, color="black", linewidth=0.6)
    bars.set_ylim(-limit, limit)
    bars.set_yticks([-limit, 0.0, limit], [f"{-limit:.2g}", "0", f"{limit:.2g}"], fontsize=7)
    bars.set_xticks(positions, [f"image {index + 1}" for index in positions], fontsize=8)
    bars.set_ylabel("Δ log p(answer)", fontsize=8)
    bars.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    bars.set_title("Whole answer: log-prob drop when the image is blanked", fontsize=9)
    token_limit = symmetric_limit(sam.scores[1:], baseline.scores[1:])
    labels = [str(index + 1) for index in range(num_images)]
    heatmaps = [figure.add_subplot(grid[1, column]) for column in range(2)]
    for tokens, (title, attribution) in zip(heatmaps, (("SAM", sam), ("baseline", baseline))):
        mappable = tokens.imshow(
            attribution.scores[1:], cmap=SIGNED_CMAP, vmin=-token_limit, vmax=token_limit, aspect="auto", interpolation="nearest"
        )
        tokens.set_xticks(range(num_images), labels, fontsize=7)
        tokens.set_yticks(range(len(attribution.tokens)), attribution.tokens, fontsize=7)
        tokens.set_xlabel("image", fontsize=8)
        tokens.set_title(f"{title}: per answer token", fontsize=9)
    add_colorbar(figure, mappable, heatmaps, "Δ log p(token)")
    figure.suptitle("Image attribution", fontsize=10)
    return figure


def plot_patch_attribution(
    sam: PatchAttribution, baseline: PatchAttribution, images: list[Image.Image], token: int | None = None
) -> Figure:
    """Rows SAM and baseline, one column per image, on one diverging scale (red: the block supports the answer)."""
    pictures = [square_image(image) for image in images]
    figure, axes = new_figure([row_height(len(pictures))] * 2)
    maps = {"SAM": sam.maps(token), "baseline": baseline.maps(token)}
    limit = symmetric_limit(*maps.values())
    for row, (label, grids) in enumerate(maps.items()):
        labels = panel_labels(len(pictures)) if row == 0 else None
        mappable = overlay_row(axes[row, 0], pictures, grids, SIGNED_CMAP, -limit, limit, labels, label)
    add_colorbar(figure, mappable, axes[:, 0].tolist(), "Δ log p")
    target = "whole answer" if token is None else f"answer token {token + 1}"
    figure.suptitle(f"Patch occlusion ({sam.window}×{sam.window} patches, {target})", fontsize=10)
    return figure


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
