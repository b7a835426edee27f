"""Pieces every view shares: the patch grid, progress reporting and headless figure helpers.

Figures are plain `matplotlib.figure.Figure` objects rendered with Agg: no pyplot state, so views can be drawn
from UI worker threads. Colour maps are perceptually uniform for magnitudes and diverging (centred on zero)
for signed values and differences.
"""

import io
import math
from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec
from PIL import Image

Progress = Callable[[float, str], None]  # progress(fraction in [0, 1], message): the UI's hook

GUIDANCE_CMAP = "viridis"
ATTENTION_CMAP = "magma"
SIMILARITY_CMAP = "cividis"
SIGNED_CMAP = "RdBu_r"  # diverging: differences and signed attributions, white at zero
SAM_COLOUR, BASELINE_COLOUR = "#5e3c99", "#e66101"  # a colour-blind-safe pair for side-by-side bars
OVERLAY_ALPHA = 0.7
PANEL_PIXELS = 128  # overlay pictures: the square the model sees, at about the size a panel is drawn
FIGURE_WIDTH = 6.4  # inches at 100 dpi: readable at about 600 px wide
DPI = 100


def grid_side(num_patches: int) -> int:
    """G for P = 1 + G·G patch features (the CLS token first, then the patches in row-major order)."""
    side = math.isqrt(num_patches - 1)
    if side * side != num_patches - 1:
        raise ValueError(f"{num_patches} patch features are not a CLS token plus a square grid")
    return side


def to_grid(values: np.ndarray) -> np.ndarray:
    """(..., P) per-patch values → (..., G, G) on the image grid, CLS dropped: patch 1 + r·G + c is row r, column c
    (the ViT's patch embedding flattens its convolution output row by row)."""
    side = grid_side(values.shape[-1])
    return values[..., 1:].reshape(*values.shape[:-1], side, side)


def numpy(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def progress_span(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A hook that maps a stage's own [0, 1] onto [start, stop] of the caller's progress."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (stop - start) * fraction, message)


# ---------------------------------------------------------------------------------------------- figures


def square_image(image: Image.Image, size: int = PANEL_PIXELS) -> np.ndarray:
    """(size, size, 3) uint8: the image as the model sees it (resized to a square), for overlays."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def new_grid(
    row_heights: list[float],
    columns: int = 1,
    width: float = FIGURE_WIDTH,
    margins: tuple[float, float, float, float] = (0.35, 0.85, 0.6, 0.05),
    **grid,
) -> tuple[Figure, GridSpec]:
    """A figure and its grid laid out by hand: rows of the given heights and margins (left, right, top, bottom),
    in inches (the right margin holds the colour bars). A layout engine measures every text before drawing and
    would cost more than the figure itself. `grid`: more gridspec options (wspace, hspace, width_ratios)."""
    left, right, top, bottom = margins
    hspace = grid.pop("hspace", 0.12)
    height = sum(row_heights) + hspace * sum(row_heights) / len(row_heights) * (len(row_heights) - 1) + top + bottom
    figure = Figure(figsize=(width, height), dpi=DPI)
    frame = {"left": left / width, "right": 1 - right / width, "top": 1 - top / height, "bottom": bottom / height}
    return figure, figure.add_gridspec(len(row_heights), columns, height_ratios=row_heights, hspace=hspace, **frame, **grid)


def new_figure(row_heights: list[float], columns: int = 1, **layout) -> tuple[Figure, np.ndarray]:
    """`new_grid` with one axes per cell: axes (rows, columns)."""
    figure, grid = new_grid(row_heights, columns, **layout)
    return figure, grid.subplots(squeeze=False)


def row_height(num_panels: int) -> float:
    """Inches for one row of square panels across the figure between the default margins."""
    return min(2.0, (FIGURE_WIDTH - 1.2) / (num_panels + (num_panels - 1) / 12))


def add_colorbar(figure: Figure, mappable, axes, label: str):
    """A slim colour bar in the right margin, beside `axes` (one Axes or a list)."""
    axes = axes if isinstance(axes, list) else [axes]
    for ax in axes:
        ax.apply_aspect()  # image axes shrink to their data's aspect: place the bar beside what is drawn
    boxes = [ax.get_position() for ax in axes]
    low, high = min(box.y0 for box in boxes), max(box.y1 for box in boxes)
    right = max(box.x1 for box in boxes)
    inch = 1 / figure.get_figwidth()
    colorbar_axes = figure.add_axes((right + 0.1 * inch, low + 0.1 * (high - low), 0.12 * inch, 0.8 * (high - low)))
    colorbar = figure.colorbar(mappable, cax=colorbar_axes)
    colorbar.set_label(label, fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    return colorbar


def upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    """(..., G, G) → (..., size, size), nearest: pixel (y, x) takes the value of the patch cell it lies in."""
    cell_of_pixel = np.arange(size) * grid_map.shape[-1] // size
    return grid_map[..., cell_of_pixel[:, None], cell_of_pixel[None, :]]


def mosaic(panels: list[np.ndarray], gap: int) -> np.ndarray:
    """(S, S) panels side by side with NaN (drawn transparent) gaps between them: (S, N·S + (N − 1)·gap)."""
    spacer = np.full((panels[0].shape[0], gap), np.nan)
    pieces = [piece for panel in panels for piece in (spacer, panel)][1:]
    return np.concatenate(pieces, axis=1)


def overlay_row(
    ax, pictures: list[np.ndarray] | None, maps: np.ndarray, cmap: str, vmin: float, vmax: float,
    labels: list[str] | None = None, row_label: str | None = None,
):
    """Draw N (G, G) maps side by side in one axes, each over its (S, S, 3) picture in grey (so the picture's own
    colours do not read as values): cell (r, c) of map n covers the pixels of patch (r, c) of picture n.
    One axes per row instead of per panel keeps figures fast to draw."""
    size = PANEL_PIXELS
    gap = size // 12
    if pictures is not None:
        ax.imshow(mosaic([picture.mean(axis=-1) for picture in pictures], gap), cmap="gray", vmin=0, vmax=255)
    values = mosaic([upsample(grid_map, size) for grid_map in maps], gap)
    mappable = ax.imshow(
        values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", alpha=OVERLAY_ALPHA if pictures is not None else 1.0
    )
    ax.set_xticks([index * (size + gap) + size / 2 - 0.5 for index in range(len(maps))], labels or [])
    ax.xaxis.set_ticks_position("top")
    ax.tick_params(length=0, labelsize=9)
    ax.set_yticks([])
    ax.set_frame_on(False)
    if row_label:
        ax.set_ylabel(row_label, fontsize=9)
    return mappable


def panel_labels(count: int) -> list[str]:
    return [f"image {index + 1}" for index in range(count)]


def symmetric_limit(*arrays: np.ndarray) -> float:
    """One ±limit for signed maps drawn side by side (never zero, so colour bars stay valid)."""
    largest = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    return largest if largest > 0 else 1e-12


def upper_limit(*arrays: np.ndarray) -> float:
    """One upper end for non-negative maps drawn side by side (their scale starts at 0)."""
    largest = max((float(a.max()) for a in arrays if a.size), default=0.0)
    return largest if largest > 0 else 1e-12


def figure_png(figure: Figure) -> bytes:
    """PNG bytes; light compression, since encoding would otherwise take a good share of the drawing time."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()
