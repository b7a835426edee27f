"""Alignment diagnostics: how alike the visual tokens of different images are, under SAM and the baseline.

SAM's claim is that guidance keeps the semantics that link the images; if so, the images' visual tokens should
agree more with each other than under independent extraction. The Q-Former's k-th query plays the same role
in every image, so images are compared slot by slot: similarity(i, j) = mean_k cos(V_{i,k}, V_{j,k}).
"""

from dataclasses import dataclass

import matplotlib
import numpy as np
import torch

from sam_core.modeling import SamVisualTokens

from .common import DPI, SIMILARITY_CMAP, WIDE, Canvas, Layout, Scale, matrix_image, numpy, wrapped


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


def plot_alignment(sam: Alignment, baseline: Alignment, layout: Layout = WIDE) -> Canvas:
    """The two similarity matrices side by side on one colour scale, each cell labelled with its value."""
    num_images = sam.similarity.shape[0]
    width, pt = layout.width * DPI, DPI / 72
    left, gap = 30, 40 if layout.narrow else 70
    side = int(min(300, (width - 2 * left - gap) / 2))
    cell = side // num_images
    side = cell * num_images
    title = wrapped("How alike the images' visual tokens are", layout)
    title_height = (title.count("\n") + 1) * layout.title * pt * 1.25 + 12
    heading = 2 * layout.label * pt * 1.3 + 6
    bar_block = 12 + 8 + layout.tick * pt * 1.4 + 2 * layout.label * pt * 1.5 + 10
    scale = Scale(SIMILARITY_CMAP, float(min(sam.similarity.min(), baseline.similarity.min())), 1.0,
                  wrapped("mean cosine similarity of two images' visual tokens", layout, layout.label))
    canvas = Canvas(width, title_height + heading + side + layout.tick * pt * 2 + 16 + bar_block)
    canvas.text(width / 2, 8, title, layout.title, ha="center", va="top")
    colours = matplotlib.colormaps[SIMILARITY_CMAP]
    norm = scale.norm()
    value_size = layout.tick if cell >= 34 else layout.tick * 0.8
    top = title_height + heading
    for column, (name, result) in enumerate((("SAM", sam), ("baseline", baseline))):
        x = left + column * (side + gap)
        score = "one image" if np.isnan(result.score) else f"alignment {result.score:.3f}"
        canvas.text(x + side / 2, top - 4, f"{name}{chr(10) if layout.narrow else ': '}{score}", layout.label, ha="center", va="bottom")
        canvas.image(matrix_image(result.similarity, scale, cell, cell), x, top)
        for index in range(num_images):
            canvas.text(x - 4, top + (index + 0.5) * cell, str(index + 1), layout.tick, ha="right", va="center")
            canvas.text(x + (index + 0.5) * cell, top + side + 3, str(index + 1), layout.tick, ha="center", va="top")
        if num_images <= 6:
            for (row, col), value in np.ndenumerate(result.similarity):
                dark = sum(colours(norm(value))[:3]) < 1.5
                canvas.text(x + (col + 0.5) * cell, top + (row + 0.5) * cell, f"{value:.2f}", value_size, ha="center",
                            va="center", color="white" if dark else "black")
    canvas.colorbar(scale, left + 10, canvas.height - bar_block + 2, 2 * side + gap - 20, layout)
    return canvas
