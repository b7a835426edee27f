"""Guidance maps: where SAM's adaptive adjustment takes each context patch from.

At every patch position p the patch scorer's softmax over images gives α_{j,p}, and the context image is
Î_p = Σ_j α_{j,p} F_{j,p}. A map per image on its patch grid shows which of its patches feed the context.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sam_core.modeling import SamVisualTokens

from .common import (
    GUIDANCE_CMAP, PANEL_PIXELS, WIDE, Canvas, Layout, MapRow, Scale, numpy, overlay_figure, square_image, to_grid, upper_limit,
    upsample,
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


def plot_guidance(guidance: GuidanceMaps, images: Sequence[Image.Image], layout: Layout = WIDE) -> Canvas:
    """α per image over its patches on one shared colour scale; for "others" one row of source maps per target
    image, each panel labelled with its mean α."""
    pictures = list(images)
    scale = Scale(GUIDANCE_CMAP, 0.0, upper_limit(guidance.maps), "α (share of the context at the patch)")
    if guidance.context == "all":
        labels = [f"image {index + 1}: {weight:.0%}" for index, weight in enumerate(guidance.image_weights)]
        title = "Where SAM's shared context comes from (α sums to 1 over the images at every patch)"
        return overlay_figure(pictures, [MapRow("α", guidance.maps, scale)], title, layout, labels)
    rows = [
        MapRow(f"context of {target + 1}", guidance.maps[target], scale, [f"{w:.2f}" for w in guidance.image_weights[target]])
        for target in range(len(pictures))
    ]
    title = "Context of each image, taken from the other images (mean α on each panel)"
    return overlay_figure(pictures, rows, title, layout)
