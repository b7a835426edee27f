"""Q-Former attention explorer: where the K queries look, per layer, head and query.

Two streams cross-attend: the image stream (the Q-Former proper) over each image's own patches, and SAM's
context stream over the pooled context image. The maps are read from the extraction that fed the answer
(`Capture.visual`), never recomputed. Layers without cross-attention (every other layer in InstructBLIP's
Q-Former) and the context stream's layers after the exchange hold no maps and cannot be selected.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sam_core.modeling import SamVisualTokens

from .common import (
    ATTENTION_CMAP, SIGNED_CMAP, WIDE, Canvas, Layout, MapRow, Scale, numpy, overlay_figure, symmetric_limit, to_grid,
    upper_limit,
)

STREAMS = ("image", "context")
HEAD_REDUCTIONS = ("mean", "max")


@dataclass
class AttentionMaps:
    """One stream's cross-attention for one selection, as a map per image on its patch grid.

    maps (N, G, G): attention probability on each patch, CLS dropped; cls (N,): the probability on CLS.
    For one head or the mean over heads (any query selection), each map plus its `cls` sums to 1: the
    probabilities over the P = 1 + G·G keys. head "max" is the per-patch maximum over heads (no longer a
    distribution). For the context stream, image n's map is over the context image of image n.
    """

    stream: str
    layer: int
    head: int | str
    query: int | str
    maps: np.ndarray
    cls: np.ndarray


@dataclass
class AttentionComparison:
    """The image stream of the same image under SAM and under the baseline, for one selection.

    difference (N, G, G) = sam.maps − baseline.maps; vmax: the upper end of the shared colour scale of both
    panels (which start at 0); difference_limit: the ± end of the difference's scale (vmax when the two are
    identical, as with an untrained SAM, so an all-zero difference reads as zero rather than as noise)."""

    sam: AttentionMaps
    baseline: AttentionMaps
    difference: np.ndarray
    vmax: float
    difference_limit: float


def stream_attentions(visual: SamVisualTokens, stream: str) -> tuple:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    maps = visual.image_cross_attentions if stream == "image" else visual.context_cross_attentions
    if maps is None:
        if stream == "context" and visual.image_cross_attentions is not None:
            raise ValueError("no context stream: the baseline and single-image sets are extracted without guidance")
        raise ValueError("no attention maps: extract with output_attentions=True (visualization.capture does)")
    return maps


def cross_attention_layers(visual: SamVisualTokens, stream: str = "image") -> list[int]:
    """Indices of the Q-Former layers whose cross-attention this stream recorded."""
    return [index for index, maps in enumerate(stream_attentions(visual, stream)) if maps is not None]


def attention_maps(
    visual: SamVisualTokens,
    stream: str = "image",
    layer: int | None = None,
    head: int | str = "mean",
    query: int | str = "mean",
    sample: int = 0,
) -> AttentionMaps:
    """One map per image for a layer (default: the stream's last cross-attention layer), a head index or
    "mean"/"max" over heads, and a query index or "mean" over the K queries."""
    recorded = stream_attentions(visual, stream)
    layers = [index for index, maps in enumerate(recorded) if maps is not None]
    if layer is None:
        layer = layers[-1]
    if layer not in layers:
        raise ValueError(f"layer {layer} has no {stream}-stream cross-attention; choose from {layers}")
    probabilities = numpy(recorded[layer][sample])  # (N, H, K, P)
    num_heads, num_queries = probabilities.shape[1:3]
    if query == "mean":
        per_head = probabilities.mean(axis=2)  # (N, H, P)
    elif isinstance(query, int) and 0 <= query < num_queries:
        per_head = probabilities[:, :, query]
    else:
        raise ValueError(f"query must be 'mean' or an index below {num_queries}, got {query!r}")
    if head in HEAD_REDUCTIONS:
        reduced = per_head.mean(axis=1) if head == "mean" else per_head.max(axis=1)  # (N, P)
    elif isinstance(head, int) and 0 <= head < num_heads:
        reduced = per_head[:, head]
    else:
        raise ValueError(f"head must be one of {HEAD_REDUCTIONS} or an index below {num_heads}, got {head!r}")
    return AttentionMaps(stream, layer, head, query, maps=to_grid(reduced), cls=reduced[:, 0])


def compare_attention(
    sam: SamVisualTokens,
    baseline: SamVisualTokens,
    layer: int | None = None,
    head: int | str = "mean",
    query: int | str = "mean",
    sample: int = 0,
) -> AttentionComparison:
    """Image-stream maps of SAM and the baseline for the same selection, on one colour scale."""
    sam_maps = attention_maps(sam, "image", layer, head, query, sample)
    baseline_maps = attention_maps(baseline, "image", sam_maps.layer, head, query, sample)
    difference = sam_maps.maps - baseline_maps.maps
    return AttentionComparison(
        sam=sam_maps,
        baseline=baseline_maps,
        difference=difference,
        vmax=upper_limit(sam_maps.maps, baseline_maps.maps),
        difference_limit=symmetric_limit(difference) if difference.any() else upper_limit(sam_maps.maps, baseline_maps.maps),
    )


def selection_label(maps: AttentionMaps) -> str:
    head = f"head {maps.head}" if isinstance(maps.head, int) else f"{maps.head} over heads"
    query = f"query {maps.query}" if isinstance(maps.query, int) else "mean over queries"
    return f"layer {maps.layer}, {head}, {query}"


def attention_scale(vmax: float) -> Scale:
    return Scale(ATTENTION_CMAP, 0.0, vmax, "attention on the patch (SAM and baseline)")


def plot_attention_comparison(comparison: AttentionComparison, images: Sequence[Image.Image], layout: Layout = WIDE) -> Canvas:
    """Rows SAM, baseline (one shared scale from 0) and SAM − baseline (diverging, square-root scale); one
    column per image (narrow: one row per image)."""
    title = f"Where the Q-Former's queries look ({selection_label(comparison.sam)})"
    return overlay_figure(list(images), comparison_rows(comparison), title, layout)


def comparison_rows(comparison: AttentionComparison) -> list[MapRow]:
    """SAM and the baseline on one scale from 0, their difference on a symmetric square-root scale."""
    shared = attention_scale(comparison.vmax)
    limit = comparison.difference_limit
    difference = Scale(SIGNED_CMAP, -limit, limit, "SAM − baseline (square-root scale)", root=True)
    return [
        MapRow("SAM", comparison.sam.maps, shared),
        MapRow("baseline", comparison.baseline.maps, shared),
        MapRow("SAM − baseline", comparison.difference, difference),
    ]


def plot_attention_maps(
    maps: AttentionMaps, pictures: Sequence[np.ndarray | Image.Image], vmax: float | None = None, layout: Layout = WIDE,
    images: Sequence[Image.Image] | None = None,
) -> Canvas:
    """One stream's maps over the given pictures (the images, or `guidance.context_images` for the context
    stream; one picture is reused for every image when all share one context). `images`: the input images for
    the colour row (default: the pictures themselves)."""
    num_images = maps.maps.shape[0]
    underlay = [pictures[index % len(pictures)] for index in range(num_images)]
    shown = list(images) if images is not None else underlay
    scale = Scale(ATTENTION_CMAP, 0.0, upper_limit(maps.maps) if vmax is None else vmax, "attention on the patch")
    label = "over its context" if maps.stream == "context" else "attention"
    title = f"{maps.stream.capitalize()}-stream attention ({selection_label(maps)})"
    return overlay_figure(shown, [MapRow(label, maps.maps, scale)], title, layout, underlays=[underlay])
