"""Pieces every view shares: the patch grid, progress reporting and the figure canvas.

Figures are composed in pixels on a `Canvas` (numpy pictures, FreeType text), then encoded as PNG: no pyplot
state, so views can be drawn from UI worker threads, and no axes, whose building and drawing would cost more than
the pictures. Each is laid out for a wide or a narrow screen (`Layout`). Colour maps (matplotlib's) are
perceptually uniform for magnitudes and diverging (centred on zero) for signed values and differences.
"""

import functools
import io
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import FuncNorm, Normalize, to_rgb
from PIL import Image, ImageDraw, ImageFont

Progress = Callable[[float, str], None]  # progress(fraction in [0, 1], message): the UI's hook

GUIDANCE_CMAP = "viridis_r"  # reversed: the strong end is dark, so it stands out over a light picture
ATTENTION_CMAP = "magma_r"
SIMILARITY_CMAP = "cividis"
SIGNED_CMAP = "RdBu_r"  # diverging: differences and signed attributions, white at zero
SAM_COLOUR, BASELINE_COLOUR = "#5e3c99", "#e66101"  # a colour-blind-safe pair for side-by-side bars
MAX_OPACITY = 0.85  # of a map's colour at the end of its scale, over the picture
GREY_FLOOR = 110  # the darkest grey a picture under a map is drawn in (0-255)
PANEL_PIXELS = 256  # overlay pictures: the square the model sees, at least the size a panel is drawn
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


@dataclass(frozen=True)
class Layout:
    """How a figure is drawn for where it is shown. "wide" (desktop, the HTML report): images side by side,
    about 960 px wide; "narrow" (phones, about 360 px): one image per row. Font sizes in points at `DPI`."""

    name: str
    width: float  # inches
    title: float
    label: float
    tick: float

    @property
    def narrow(self) -> bool:
        return self.name == "narrow"


WIDE = Layout("wide", 8.6, title=14, label=12, tick=11)
NARROW = Layout("narrow", 3.6, title=10, label=9, tick=8.5)
LAYOUTS = {layout.name: layout for layout in (WIDE, NARROW)}


@dataclass(frozen=True)
class Scale:
    """A colour scale: colour map, range and colour-bar label. Rows drawn with the same Scale share one colour
    bar. `root`: a square-root scale (signed: sign · √|x|), so that small values stay visible beside one large
    one; the colour bar keeps the true values on its ticks."""

    cmap: str
    low: float
    high: float
    label: str
    root: bool = False

    @property
    def signed(self) -> bool:
        """Centred on zero (differences, attributions): its neutral end is 0, not `low`."""
        return self.low == -self.high

    def norm(self) -> Normalize:
        if not self.root:
            return Normalize(self.low, self.high)
        return FuncNorm((signed_root, signed_square), self.low, self.high)

    def strength(self, values: np.ndarray) -> np.ndarray:
        """How far each value is from the scale's neutral end (0 for signed scales, `low` otherwise), in [0, 1]."""
        span = max(abs(self.low), abs(self.high)) if self.signed else self.high - self.low
        amount = np.abs(values) if self.signed else values - self.low
        strength = np.clip(amount / (span or 1.0), 0.0, 1.0)
        return np.sqrt(strength) if self.root else strength


def wrapped(title: str, layout: Layout, size: float | None = None) -> str:
    """The title broken into lines that fit the layout's width (about 0.55 em per character)."""
    per_line = int(layout.width * 72 / (0.6 * (size or layout.title)))
    return "\n".join(textwrap.fill(line, per_line) for line in title.split("\n"))


def signed_root(values):
    return np.sign(values) * np.sqrt(np.abs(values))


def signed_square(values):
    return np.sign(values) * np.square(values)


@dataclass
class MapRow:
    """One kind of map with one (G, G) map per picture ("SAM", "baseline", "SAM − baseline")."""

    label: str
    maps: np.ndarray  # (N, G, G)
    scale: Scale
    notes: list[str] | None = None  # one short text per panel, drawn in its corner


def square_image(image: Image.Image, size: int = PANEL_PIXELS) -> np.ndarray:
    """(size, size, 3) uint8: the image as the model sees it (resized to a square), for overlays."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def grey_underlay(picture: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 → (S, S, 3) float grey, lightened into [GREY_FLOOR, 255] so overlays never darken it."""
    luminance = picture.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey = GREY_FLOOR + (255 - GREY_FLOOR) * luminance / 255
    return np.repeat(grey[..., None], 3, axis=-1)


def upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    """(..., G, G) → (..., size, size), nearest: pixel (y, x) takes the value of the patch cell it lies in."""
    cell_of_pixel = np.arange(size) * grid_map.shape[-1] // size
    return grid_map[..., cell_of_pixel[:, None], cell_of_pixel[None, :]]


def map_panel(picture: np.ndarray | None, grid_map: np.ndarray, scale: Scale, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a (G, G) map in the scale's colours over the picture in light grey; cell (r, c)
    covers the pixels of patch (r, c). The colour's opacity grows with the value's distance from the scale's
    neutral end, so low values leave the picture visible."""
    values = upsample(grid_map, size)
    colours = matplotlib.colormaps[scale.cmap](scale.norm()(values))[..., :3] * 255  # (S, S, 3)
    if picture is None:
        return colours.astype(np.uint8)
    opacity = (scale.strength(values) * MAX_OPACITY)[..., None]
    return (grey_underlay(picture) * (1 - opacity) + colours * opacity).astype(np.uint8)


class Canvas:
    """A figure composed in pixels from its top left corner: RGB blocks pasted into one white picture, and text
    drawn with FreeType (matplotlib's DejaVu fonts). Matplotlib's axes, ticks, layout and image resampling would
    cost more than the pictures themselves, and every figure here is pictures, text and colour bars."""

    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self.pixels = np.full((self.height, self.width, 3), 255, dtype=np.uint8)
        self.texts = []

    def image(self, rgb: np.ndarray, x: float, y: float) -> None:
        x, y = int(x), int(y)
        block = rgb[: max(0, self.height - y), : max(0, self.width - x)]
        self.pixels[y : y + block.shape[0], x : x + block.shape[1]] = block

    def text(self, x: float, y: float, text: str, size: float, ha: str = "left", va: str = "top", color: str = "black",
             weight: str = "normal", rotation: int = 0, box: bool = False) -> None:
        """`text` (lines split at newlines) at (x, y) in pixels, aligned by `ha` (left, center, right) and `va` (top,
        center, bottom); `size` in points; rotation 0 or 90 (reading upwards); `box`: on a light background."""
        self.texts.append((x, y, text, size, ha, va, color, weight, rotation, box))

    def colorbar(self, scale: Scale, x: float, y: float, width: float, layout: Layout, height: int = 12) -> None:
        """A horizontal colour bar at (x, y), ticks and their values under it, the scale's label below those."""
        width = int(width)
        colours = matplotlib.colormaps[scale.cmap](np.linspace(0.0, 1.0, width))[:, :3] * 255  # (W, 3)
        bar = np.repeat(colours[None].astype(np.uint8), height, axis=0)
        bar[[0, -1]], bar[:, [0, -1]] = 80, 80  # a thin grey frame
        self.image(bar, x, y)
        norm, tick_size = scale.norm(), layout.tick
        for value in colorbar_ticks(scale):
            position = x + float(norm(value)) * (width - 1)
            self.image(np.full((4, 1, 3), 60, dtype=np.uint8), position, y + height)
            self.text(position, y + height + 5, f"{value:.2g}", tick_size, ha="center", va="top")
        self.text(x + width / 2, y + height + 7 + tick_size * 1.6, scale.label, layout.label, ha="center", va="top")

    def picture(self) -> Image.Image:
        picture = Image.fromarray(self.pixels)
        draw = ImageDraw.Draw(picture)
        for x, y, text, size, ha, va, color, weight, rotation, box in self.texts:
            face = font(round(size * DPI / 72), weight == "bold")
            left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=face, align=ha)
            width, height = right - left, bottom - top
            if rotation:
                width, height = height, width
            x0 = x - {"left": 0, "center": width / 2, "right": width}[ha]
            y0 = y - {"top": 0, "center": height / 2, "bottom": height}[va]
            if box:
                draw.rectangle((x0 - 2, y0 - 1, x0 + width + 2, y0 + height + 1), fill=(255, 255, 255))
            if rotation:
                label = Image.new("L", (height + 2, width + 2), 0)
                ImageDraw.Draw(label).multiline_text((-left + 1, -top + 1), text, font=face, fill=255)
                label = label.rotate(90, expand=True)
                picture.paste(Image.new("RGB", label.size, color), (int(x0), int(y0)), label)
            else:
                draw.multiline_text((x0 - left, y0 - top), text, font=face, fill=color, align=ha)
        return picture

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.picture().save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


@functools.lru_cache(maxsize=32)
def font(pixels: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), pixels)


def matrix_image(values: np.ndarray, scale: Scale, cell_width: int, cell_height: int, outline_row: int | None = None) -> np.ndarray:
    """(R, C) values → (R·cell_height, C·cell_width, 3) uint8 cells in the scale's colours, a thin grey frame, and
    row `outline_row` framed in black."""
    colours = matplotlib.colormaps[scale.cmap](scale.norm()(values))[..., :3] * 255  # (R, C, 3)
    image = np.repeat(np.repeat(colours, cell_height, axis=0), cell_width, axis=1).astype(np.uint8)
    image[[0, -1]], image[:, [0, -1]] = 120, 120
    if outline_row is not None:
        top, bottom = outline_row * cell_height, (outline_row + 1) * cell_height
        image[top:top + 3], image[bottom - 3:bottom], image[top:bottom, :3], image[top:bottom, -3:] = 0, 0, 0, 0
    return image


def colorbar_ticks(scale: Scale) -> list[float]:
    """Round values along the scale: its ends, zero for signed scales, and (square-root scales) quarter points."""
    if scale.signed:
        limit = max(abs(scale.low), abs(scale.high))
        inner = [limit / 4] if scale.root else [limit / 2]
        return [-limit, *(-v for v in inner), 0.0, *inner, limit]
    return [scale.low + (scale.high - scale.low) * f for f in ((0, 0.25, 1) if scale.root else (0, 0.25, 0.5, 0.75, 1))]


def overlay_figure(
    pictures: list[np.ndarray | Image.Image],
    rows: list[MapRow],
    title: str,
    layout: Layout = WIDE,
    picture_labels: list[str] | None = None,
    underlays: list[list[np.ndarray] | None] | None = None,
) -> Canvas:
    """The pictures in colour, then each row of maps over them in grey, one colour bar per distinct Scale under
    the maps. Wide: one row per kind, images left to right. Narrow: one column per kind, images top to bottom.
    `pictures`: (S, S, 3) uint8 or PIL images (squared to the panel's size); `underlays`: per row, the pictures
    to draw its maps over (default: `pictures`; None: no picture)."""
    count, kinds = len(pictures), 1 + len(rows)
    title = wrapped(title, layout)
    labels = picture_labels or [f"image {index + 1}" for index in range(count)]
    underlays = underlays or [pictures] * len(rows)
    scales = list(dict.fromkeys(row.scale for row in rows))
    width = layout.width * DPI
    pt = DPI / 72  # pixels per point
    title_height = (title.count("\n") + 1) * layout.title * pt * 1.25 + 14
    bar_block = 12 + 8 + layout.tick * pt * 1.4 + layout.label * pt * 1.5 + 14  # bar, ticks, values, label, gap
    if layout.narrow:  # columns: picture, then each kind; one image per row
        left, right = 22, 8
        panel = int((width - left - right) / (kinds + (kinds - 1) * 0.06))
        gap = max(3, round(panel * 0.06))
        header = 2 * layout.label * pt * 1.25 + 6
        grid_height = count * panel + (count - 1) * gap
        canvas = Canvas(width, title_height + header + grid_height + 14 + bar_block * len(scales))
        top = title_height + header
        for column in range(kinds):
            x = left + column * (panel + gap)
            name = "image" if column == 0 else rows[column - 1].label.replace(" − ", " −\n").replace(" of ", "\nof ")
            canvas.text(x + panel / 2, top - 4, name, layout.label, ha="center", va="bottom")
            for index in range(count):
                y = top + index * (panel + gap)
                canvas.image(panel_image(pictures, rows, underlays, column, index, panel), x, y)
                if column and rows[column - 1].notes:
                    canvas.text(x + 3, y + 3, rows[column - 1].notes[index], layout.tick, va="top", box=True)
        for index in range(count):
            canvas.text(left - 5, top + index * (panel + gap) + panel / 2, str(index + 1), layout.tick, ha="right", va="center")
        bars_top, bar_width = top + grid_height + 14, width - 2 * 30
        for index, scale in enumerate(scales):
            canvas.colorbar(scale, 30, bars_top + index * bar_block, bar_width, layout)
    else:  # rows: picture, then each kind; images left to right
        left, right = 125, 20
        panel = int(min(180, (width - left - right) / (count + (count - 1) * 0.08)))
        gap = max(4, round(panel * 0.08))
        header = layout.label * pt * 1.3 + 6
        strip = count * panel + (count - 1) * gap
        grid_height = kinds * panel + (kinds - 1) * gap
        canvas = Canvas(width, title_height + header + grid_height + 16 + bar_block)
        top = title_height + header
        for index in range(count):
            canvas.text(left + index * (panel + gap) + panel / 2, top - 4, labels[index], layout.label, ha="center", va="bottom")
        for row in range(kinds):
            y = top + row * (panel + gap)
            if row:
                label = rows[row - 1].label.replace(" − ", " −\n").replace(" of ", "\nof ")
                canvas.text(left - 10, y + panel / 2, label, layout.label, ha="right", va="center")
            for index in range(count):
                x = left + index * (panel + gap)
                canvas.image(panel_image(pictures, rows, underlays, row, index, panel), x, y)
                if row and rows[row - 1].notes:
                    canvas.text(x + 3, y + 3, rows[row - 1].notes[index], layout.tick, va="top", box=True)
        bar_width = min(320, (strip - 60 * (len(scales) - 1)) / len(scales))
        for index, scale in enumerate(scales):
            canvas.colorbar(scale, left + 10 + index * (bar_width + 60), top + grid_height + 16, bar_width, layout)
    canvas.text(width / 2, 8, title, layout.title, ha="center", va="top")
    return canvas


def panel_image(pictures, rows: list[MapRow], underlays, kind: int, index: int, size: int) -> np.ndarray:
    """Kind 0: picture `index` in colour; kind k: row k − 1's map of that picture over its underlay."""
    if kind == 0:
        return resized(pictures[index], size)
    row, underlay = rows[kind - 1], underlays[kind - 1]
    picture = None if underlay is None else resized(underlay[index % len(underlay)], size)
    return map_panel(picture, row.maps[index], row.scale, size)


def resized(picture: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the picture squared as the model sees it."""
    if isinstance(picture, Image.Image):
        return square_image(picture, size)
    if picture.shape[0] == size and picture.shape[1] == size:
        return picture
    return np.asarray(Image.fromarray(picture).resize((size, size), Image.BILINEAR))


def to_rgb_bytes(colour: str) -> tuple[int, int, int]:
    return tuple(round(channel * 255) for channel in to_rgb(colour))


def symmetric_limit(*arrays: np.ndarray) -> float:
    """One ±limit for signed maps drawn side by side (never zero, so colour bars stay valid)."""
    largest = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    return largest if largest > 0 else 1e-12


def upper_limit(*arrays: np.ndarray) -> float:
    """One upper end for non-negative maps drawn side by side (their scale starts at 0)."""
    largest = max((float(a.max()) for a in arrays if a.size), default=0.0)
    return largest if largest > 0 else 1e-12


def figure_png(figure: Canvas) -> bytes:
    """PNG bytes; light compression, since encoding would otherwise take a good share of the drawing time."""
    return figure.png()
