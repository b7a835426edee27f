"""Alignment diagnostics: how alike the visual tokens of different images are, under SAM and the baseline.

SAM's claim is that guidance keeps the semantics that link the images; if so, the images' visual tokens should
agree more with each other than under independent extraction. The Q-Former's k-th query plays the same role
in every image, so images are compared slot by slot: similarity(i, j) = mean_k cos(V_{i,k}, V_{j,k}).
"""

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from sam_core.modeling import SamVisualTokens

from .common import SIMILARITY_CMAP, add_colorbar, new_figure, numpy


@dataclass
class Alignment:
    """similarity (N, N): mean cosine similarity of the images' visual tokens, query slot by query slot
    (symmetric, 1 on the diagonal); score: the mean off-diagonal similarity (nan for a single image)."""

    similarity: np.ndarray
    score: float


def alignment(visual: SamVisualTokens, sample: int = 0) -> Alignment:
    tokens = torch.nn.functional.normalize(visual.visual_tokens[sample].float(), dim=-1)  # (N, K, d_llm)
    similarity = numpy(torch.einsum("ikd,jkd->ij", tokens, tokens) / tokens.shape[1])  # (N, N)
    num_images = similarity.shape[0]
    off_diagonal = similarity[~np.eye(num_images, dtype=bool)]
    score = float(off_diagonal.mean()) if off_diagonal.size else float("nan")
    return Alignment(similarity, score)


def plot_alignment(sam: Alignment, baseline: Alignment) -> Figure:
    """The two similarity matrices side by side on one colour scale (the values are in `Alignment.similarity`)."""
    figure, axes = new_figure([2.4], 2, margins=(0.45, 0.85, 0.55, 0.45), wspace=0.25)
    low = float(min(sam.similarity.min(), baseline.similarity.min()))
    num_images = sam.similarity.shape[0]
    labels = [str(index + 1) for index in range(num_images)]
    for ax, (title, result) in zip(axes[0], (("SAM", sam), ("baseline", baseline))):
        mappable = ax.imshow(result.similarity, cmap=SIMILARITY_CMAP, vmin=low, vmax=1.0)
        ax.set_xticks(range(num_images), labels)
        ax.set_yticks(range(num_images), labels)
        ax.set_xlabel("image", fontsize=8)
        ax.set_title(f"{title}: alignment {result.score:.3f}", fontsize=9)
    add_colorbar(figure, mappable, axes[0].tolist(), "mean cosine similarity")
    figure.suptitle("Cross-image similarity of the visual tokens", fontsize=10)
    return figure
