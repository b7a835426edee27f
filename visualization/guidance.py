"""Guidance maps: where SAM's adaptive adjustment takes each context patch from.

At every patch position p the patch scorer's softmax over images gives α_{j,p}, and the context image is
Î_p = Σ_j α_{j,p} F_{j,p}. A map per image on its patch grid shows which of its patches feed the context.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from sam_core.modeling import SamVisualTokens

from .common import (
    FIGURE_WIDTH, GUIDANCE_CMAP, PANEL_PIXELS, add_colorbar, new_figure, new_grid, numpy, overlay_row, row_height, square_image,
    to_grid, upper_limit, upsample,
)


@dataclass
class GuidanceMaps:
    """α on the patch grid (CLS dropped; its weight is kept in `cls`).

    context "all" (one context for every image):
        maps (N, G, G): the N maps sum to 1 at every (row, col); image_weights (N,): mean α over the patches
        (incl. CLS), summing to 1 — each image's share of the context; cls (N,).
    context "others" (image t's context pools the other images):
        maps (N_target, N_source, G, G): for each target, the source maps sum to 1 at every (row, col) and the
        target's own map is 0; image_weights (N_target, N_source): mean α over patches, rows sum to 1, zero
        diagonal; cls (N_target, N_source).
    """

    context: str
    maps: np.ndarray
    image_weights: np.ndarray
    cls: np.ndarray


def guidance_maps(visual: SamVisualTokens, sample: int = 0) -> GuidanceMaps:
    """α of one sample of a guided extraction; the baseline and single-image sets have none."""
    if visual.guidance_weights is None:
        raise ValueError("no guidance weights: the baseline and single-image sets are extracted without guidance")
    alpha = numpy(visual.guidance_weights[sample])  # (N, P) or (N_target, N_source, P)
    context = "all" if alpha.ndim == 2 else "others"
    return GuidanceMaps(context=context, maps=to_grid(alpha), image_weights=alpha.mean(axis=-1), cls=alpha[..., 0])


def context_images(images: Sequence[Image.Image], guidance: GuidanceMaps, size: int = PANEL_PIXELS) -> np.ndarray:
    """(C, size, size, 3) uint8 pixel picture of what the context stream attends to: every patch cell painted
    with the α-weighted blend of the images' pixels there. C = 1 for "all", N (one per target) for "others".
    An approximation for display: Î mixes features, not pixels."""
    pixels = np.stack([square_image(image, size) for image in images]).astype(np.float32)  # (N, S, S, 3)
    maps = guidance.maps if guidance.context == "others" else guidance.maps[None]  # (C, N, G, G)
    weights = upsample(maps, size)  # (C, N, S, S)
    blend = np.einsum("cnhw,nhwk->chwk", weights, pixels)
    return blend.clip(0, 255).astype(np.uint8)


def plot_guidance(guidance: GuidanceMaps, images: Sequence[Image.Image]) -> Figure:
    """α per image over its patches on one shared colour scale; for "others" a target × source grid of maps
    plus the target × source matrix of mean α."""
    pictures = [square_image(image) for image in images]
    num_images = len(pictures)
    vmax = upper_limit(guidance.maps)
    if guidance.context == "all":
        figure, axes = new_figure([row_height(num_images)])
        labels = [f"image {index + 1}: {weight:.2f}" for index, weight in enumerate(guidance.image_weights)]
        mappable = overlay_row(axes[0, 0], pictures, guidance.maps, GUIDANCE_CMAP, 0.0, vmax, labels)
        add_colorbar(figure, mappable, axes[0, 0], "α")
        figure.suptitle("Context share α of each patch (sums to 1 over the images at every patch)", fontsize=10)
        return figure

    left, right, matrix_width, gap = 0.45, 0.2, 1.5, 1.35  # inches; the gap holds the colour bar and the matrix's labels
    panel = min(0.9, (FIGURE_WIDTH - left - right - matrix_width - gap) / (num_images + (num_images - 1) / 12))
    maps_width = panel * (num_images + (num_images - 1) / 12)
    gap = FIGURE_WIDTH - left - right - maps_width - matrix_width
    figure, grid = new_grid(
        [panel] * num_images, 2, margins=(left, right, 0.6, 0.45), width_ratios=[maps_width, matrix_width],
        wspace=gap / ((maps_width + matrix_width) / 2), hspace=0.1,
    )
    rows = [figure.add_subplot(grid[target, 0]) for target in range(num_images)]
    for target, ax in enumerate(rows):
        labels = [f"from {source + 1}" for source in range(num_images)] if target == 0 else None
        mappable = overlay_row(ax, pictures, guidance.maps[target], GUIDANCE_CMAP, 0.0, vmax, labels, f"for {target + 1}")
    add_colorbar(figure, mappable, rows, "α")
    ax = figure.add_subplot(grid[:, 1])
    ax.imshow(guidance.image_weights, cmap=GUIDANCE_CMAP, vmin=0.0, vmax=1.0)
    labels = [str(index + 1) for index in range(num_images)]
    ax.set_xticks(range(num_images), labels)
    ax.set_yticks(range(num_images), labels)
    ax.set_xlabel("source image", fontsize=8)
    ax.set_ylabel("target image", fontsize=8)
    ax.set_title("mean α (rows sum to 1)", fontsize=8)
    for (row, column), value in np.ndenumerate(guidance.image_weights):
        ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.5 else "black")
    figure.suptitle("Context share per target (rows) and source (columns), context = other images", fontsize=10)
    return figure
