"""One call from an image set and a prompt to every view, for SAM and the baseline, as HTML and JSON.

The pipeline runs once in compare mode with attentions (`capture`); guidance, attention and alignment views
read that run; the attributions perturb it. The HTML is self-contained (figures embedded as base64 PNGs, the
numbers embedded as JSON) so it can be mailed or attached to an issue.
"""

import base64
import dataclasses
import html
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_hex

from sam_core.generation import SamPipeline, domain_fields

from .alignment import Alignment, alignment, plot_alignment
from .attention import (
    AttentionComparison, AttentionMaps, attention_maps, compare_attention, cross_attention_layers,
    plot_attention_comparison, plot_attention_maps,
)
from .attribution import (
    ImageAttribution, PatchAttribution, TokenChoice, WordAttribution, image_attribution, patch_attribution,
    plot_image_attribution, plot_patch_attribution, word_attribution,
)
from .capture import MODES, Capture, capture
from .common import SIGNED_CMAP, WIDE, Layout, Progress, figure_png, progress_span, symmetric_limit
from .guidance import GuidanceMaps, context_images, guidance_maps, plot_guidance

FIGURES = ("guidance", "attention", "context-attention", "image-attribution", "patch-attribution", "alignment")
NO_GUIDANCE = ("Guidance needs two or more images: with one image SAM has no other image to take context from and "
               "reads it exactly like the baseline.")
SECTIONS = {
    "summary": "Answers",
    "guidance": "Guidance maps",
    "attention": "Q-Former attention",
    "image-attribution": "Image attribution",
    "patch-attribution": "Patch attribution",
    "word-attribution": "Prompt-word attribution",
    "alignment": "Alignment",
    "data": "Numbers",
}
# How to read each view: the report's sections and the app's tabs say the same.
GUIDES = {
    "guidance": "α: at every patch position, the share of SAM's shared context that each image supplies (the images' "
    "maps sum to 1 at every patch). Strong colour: this image gives the context there; each image's overall share "
    "is beside its number.",
    "attention": "Where the Q-Former's queries look when they turn each image into visual tokens, in the very run "
    "that produced the answers: SAM and the baseline on one colour scale, then their difference (red: SAM looks more, "
    "blue: less). Stronger colour means more attention; the grey picture shows through where there is little.",
    "image-attribution": "Each image is blanked (its patch features replaced by a blank image's) and the answer "
    "re-scored. A taller bar means the answer (or the chosen token) relies more on that image; for SAM this includes "
    "what the image gives the other images through guidance.",
    "patch-attribution": "Blocks of patches are blanked one at a time and the answer re-scored: red blocks support "
    "the answer (or the chosen token), blue ones work against it, uncoloured ones do not matter.",
    "word-attribution": "Each prompt word is removed and the answer re-scored: red words support it, blue ones work "
    "against it, on one scale for SAM and the baseline (hover a word for its value).",
    "alignment": "How alike two images' visual tokens are (mean cosine similarity, query slot by query slot); the "
    "alignment score is the mean over image pairs. SAM's claim is that guidance makes the images' tokens agree on "
    "what links them.",
}
# Share of the run each stage takes on the embedded model, for the progress hook.
STAGES = {"capture": (0.0, 0.15), "images": (0.15, 0.25), "patches": (0.25, 0.7), "words": (0.7, 1.0)}


@dataclass
class Report:
    """Every view of one run: guidance (None for a single image), image-stream attention of SAM vs the baseline
    at the last cross-attention layer (mean over heads and queries), SAM's context stream (None without
    guidance), and per mode ("sam", "baseline") the alignment and the three attributions; seconds per stage."""

    capture: Capture
    image_names: list[str]
    guidance: GuidanceMaps | None
    attention: AttentionComparison
    context_attention: AttentionMaps | None
    alignments: dict[str, Alignment]
    image_attributions: dict[str, ImageAttribution]
    patch_attributions: dict[str, PatchAttribution]
    word_attributions: dict[str, WordAttribution]
    seconds: dict[str, float]
    figure_failures: dict[str, str] = field(default_factory=dict)  # section → error class, from figures()
    cut_short: list[str] = field(default_factory=list)  # modes whose answer a time limit stopped early

    def to_dict(self) -> dict:
        """Every number behind the figures (floats rounded to 6 decimals, no NaN: strict JSON)."""
        capture = self.capture
        attention = self.attention
        return plain({
            "model": capture.info.to_dict(),
            "prompt": capture.prompt,
            "images": self.image_names,
            "answers": {
                mode: {
                    "text": capture.answers[mode].text,
                    "tokens": capture.tokens[mode],
                    "token_ids": capture.answer_ids[mode].tolist(),
                    "log_probs": self.image_attributions[mode].log_probs,
                    "seconds": capture.answers[mode].seconds,
                }
                for mode in MODES
            },
            "guidance": None if self.guidance is None else vars(self.guidance),
            "attention": {
                "layers": cross_attention_layers(capture.visual["sam"]),
                "layer": attention.sam.layer,
                "head": attention.sam.head,
                "query": attention.sam.query,
                "sam": attention.sam.maps,
                "baseline": attention.baseline.maps,
                "difference": attention.difference,
                "sam_cls": attention.sam.cls,
                "baseline_cls": attention.baseline.cls,
            },
            "context_attention": None if self.context_attention is None else {
                "layer": self.context_attention.layer, "maps": self.context_attention.maps, "cls": self.context_attention.cls,
            },
            "image_attribution": {
                mode: {"reference": a.reference, "scores": a.scores} for mode, a in self.image_attributions.items()
            },
            "patch_attribution": {
                mode: {"reference": a.reference, "window": a.window, "scores": a.scores}
                for mode, a in self.patch_attributions.items()
            },
            "word_attribution": {mode: {"words": a.words, "scores": a.scores} for mode, a in self.word_attributions.items()},
            "alignment": {mode: {"similarity": a.similarity, "score": a.score} for mode, a in self.alignments.items()},
            "seconds": self.seconds,
            **domain_fields(capture.domain),
        })

    def plot(self, name: str, layout: Layout = WIDE, choice: TokenChoice = TokenChoice()):
        """One view's figure (`FIGURES`); None where this run has no such view (guidance and the context stream
        need two or more images). `choice`: the answer token the attribution figures show."""
        images = self.capture.images
        if name == "guidance":
            return None if self.guidance is None else plot_guidance(self.guidance, images, layout)
        if name == "attention":
            return plot_attention_comparison(self.attention, images, layout)
        if name == "context-attention":
            if self.context_attention is None:
                return None
            pictures = list(context_images(images, self.guidance))
            return plot_attention_maps(self.context_attention, pictures, layout=layout, images=images)
        if name == "image-attribution":
            return plot_image_attribution(self.image_attributions["sam"], self.image_attributions["baseline"], choice, layout)
        if name == "patch-attribution":
            sam, baseline = self.patch_attributions["sam"], self.patch_attributions["baseline"]
            return plot_patch_attribution(sam, baseline, images, choice, layout)
        if name == "alignment":
            return plot_alignment(self.alignments["sam"], self.alignments["baseline"], layout)
        raise ValueError(f"no figure {name!r}; choose from {FIGURES}")

    def png(self, name: str, layout: Layout = WIDE, choice: TokenChoice = TokenChoice()) -> bytes | None:
        """The figure as PNG bytes; None where the view does not exist or could not be drawn. A failure is
        recorded in `figure_failures`: one bad plot must not cost the other views."""
        try:
            figure = self.plot(name, layout, choice)
            return None if figure is None else figure_png(figure)
        except Exception as error:  # any drawing failure: the numbers stay in the JSON
            self.figure_failures[name] = error.__class__.__name__
            return None

    def figures(self, layout: Layout = WIDE) -> dict[str, bytes]:
        """PNG bytes of every figure that could be drawn, keyed by section (failures in `figure_failures`)."""
        pngs = {name: self.png(name, layout) for name in FIGURES}
        return {name: png for name, png in pngs.items() if png is not None}

    def for_replotting(self) -> "Report":
        """A copy holding only what re-plotting needs (see `Capture.for_replotting`): what the app keeps per
        browser session."""
        return dataclasses.replace(self, capture=self.capture.for_replotting(), figure_failures=dict(self.figure_failures))

    def to_html(self, numbers: dict | None = None) -> str:
        """The self-contained page; `numbers`: `to_dict()` if already computed. Draws every figure once."""
        capture = self.capture
        pngs = self.figures()
        data = json.dumps(numbers or self.to_dict(), allow_nan=False).replace("<", "\\u003c")  # no "</script>", no "<!--"
        warning = capture.info.warning
        weights = f", weights {capture.info.weights_mb:.1f} MB" if capture.info.weights_mb is not None else ""
        domain_warning = capture.domain.warning if capture.domain else None
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>SAM studio report: {escape(capture.prompt)}</title>",
            f"<style>{STYLE}</style></head><body>",
            "<h1>SAM studio report</h1>",
            f"<p class=\"meta\">model {escape(capture.info.name)} ({escape(capture.info.source)}, "
            f"{escape(capture.info.precision)}{weights}, context "
            f"{escape(capture.info.context)}), {capture.num_images} images</p>",
            f'<p class="warning">{escape(warning)}</p>' if warning else "",
            f'<p class="warning" id="out-of-domain">Warning: {escape(domain_warning)}: the answers and the views below '
            "may mean nothing.</p>" if domain_warning else "",
            '<nav><ul>' + "".join(f'<li><a href="#{key}">{title}</a></li>' for key, title in SECTIONS.items()) + "</ul></nav>",
            section("summary", self.summary_html()),
            section("guidance", self.guidance_html(pngs)),
            section("attention", self.attention_html(pngs)),
            section(
                "image-attribution",
                f"<p>{GUIDES['image-attribution']} Each mode explains its own answer; blanked features: the "
                f"<code>{escape(self.image_attributions['sam'].reference)}</code> reference.</p>"
                + figure_html(pngs.get("image-attribution"), "image attribution"),
            ),
            section(
                "patch-attribution",
                f"<p>{GUIDES['patch-attribution']} Shown for the whole answer; per-token maps are in the numbers.</p>"
                + figure_html(pngs.get("patch-attribution"), "patch attribution"),
            ),
            section("word-attribution", f"<p>{GUIDES['word-attribution']}</p>" + word_highlights_html(self.word_attributions)),
            section("alignment", f"<p>{GUIDES['alignment']}</p>" + figure_html(pngs.get("alignment"), "alignment")),
            section(
                "data",
                "<p>Every number behind the figures, also written next to this file as JSON.</p>"
                f'<script type="application/json" id="report-data">{data}</script>',
            ),
            "</body></html>",
        ]
        return "\n".join(part for part in parts if part)

    def summary_html(self) -> str:
        capture = self.capture
        thumbnails = "".join(
            f'<figure><img alt="image {index + 1}" src="data:image/png;base64,{thumbnail(image)}">'
            f"<figcaption>{index + 1}: {escape(name)}</figcaption></figure>"
            for index, (image, name) in enumerate(zip(capture.images, self.image_names))
        )
        rows = "".join(
            f"<tr><th>{'SAM' if mode == 'sam' else 'baseline'}</th><td>{escape(capture.answers[mode].text)}</td>"
            f"<td>{capture.answers[mode].new_tokens}</td><td>{capture.answers[mode].seconds:.2f} s</td></tr>"
            for mode in MODES
        )
        return (
            f'<div class="images">{thumbnails}</div><p><b>Prompt:</b> {escape(capture.prompt)}</p>'
            f"<table><tr><th></th><th>answer</th><th>tokens</th><th>time</th></tr>{rows}</table>"
        )

    def guidance_html(self, pngs: dict[str, bytes]) -> str:
        if self.guidance is None:
            return f"<p>{NO_GUIDANCE}</p>"
        guide = GUIDES["guidance"]
        if self.guidance.context == "others":
            guide = ("α: for each image, the share of its context that each other image supplies at every patch "
                     "(the sources' maps sum to 1 at every patch).")
        return f"<p>{guide}</p>" + figure_html(pngs.get("guidance"), "guidance maps")

    def attention_html(self, pngs: dict[str, bytes]) -> str:
        context = ""
        if self.context_attention is not None:
            context = (
                "<p>SAM's context stream over the context image (drawn as the α-weighted blend of the images).</p>"
                + figure_html(pngs.get("context-attention"), "context-stream attention")
            )
        return f"<p>{GUIDES['attention']}</p>" + figure_html(pngs.get("attention"), "image-stream attention") + context

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """Write the HTML to `path` and the JSON next to it (same name, .json)."""
        path, numbers = Path(path), self.to_dict()
        path.write_text(self.to_html(numbers), encoding="utf-8")
        json_path = path.with_suffix(".json")
        json_path.write_text(json.dumps(numbers, indent=1, allow_nan=False), encoding="utf-8")
        return path, json_path


def explain(
    pipeline: SamPipeline,
    images: Sequence,
    prompt: str,
    preset: str = "greedy",
    max_new_tokens: int = 20,
    reference: str = "blank",
    window: int | None = None,
    perturbations_per_eval: int | None = None,
    seed: int | None = 0,
    progress: Progress | None = None,
    **overrides,
) -> Report:
    """Run the pipeline once (compare mode, attentions kept) and compute every view for SAM and the baseline.

    perturbations_per_eval: rows per batched forward pass of every attribution (None: each method's default;
    lower it if a large model runs out of memory)."""
    seconds = {}
    start = time.perf_counter()
    answering = progress_span(progress, *STAGES["capture"])
    run = capture(pipeline, images, prompt, preset, seed, progress=answering, max_new_tokens=max_new_tokens, **overrides)
    seconds["capture"] = time.perf_counter() - start

    start = time.perf_counter()
    sam, baseline = run.visual["sam"], run.visual["baseline"]
    guidance = guidance_maps(sam) if sam.guidance_weights is not None else None
    attention = compare_attention(sam, baseline)
    context = attention_maps(sam, "context") if sam.context_cross_attentions is not None else None
    alignments = {mode: alignment(run.visual[mode]) for mode in MODES}
    seconds["views"] = time.perf_counter() - start

    batch = {} if perturbations_per_eval is None else {"perturbations_per_eval": perturbations_per_eval}
    methods = {
        "images": (image_attribution, {"reference": reference, **batch}),
        "patches": (patch_attribution, {"reference": reference, "window": window, **batch}),
        "words": (word_attribution, batch),
    }
    results = {}
    for stage, (method, kwargs) in methods.items():
        start = time.perf_counter()
        low, high = STAGES[stage]
        step = (high - low) / len(MODES)
        results[stage] = {
            mode: method(pipeline, run, mode, progress=progress_span(progress, low + i * step, low + (i + 1) * step), **kwargs)
            for i, mode in enumerate(MODES)
        }
        seconds[f"{stage}_attribution"] = time.perf_counter() - start
    if progress is not None:
        progress(1.0, "report ready")
    names = [Path(im).name if isinstance(im, (str, Path)) else f"image {index + 1}" for index, im in enumerate(images)]
    return Report(
        run, names, guidance, attention, context, alignments, results["images"], results["patches"], results["words"], seconds
    )


def plain(value):
    """JSON-ready copy: arrays to nested lists rounded to 6 decimals, NaN to None."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isnan(value).any():
        return np.round(value.astype(np.float64), 6).tolist()
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def escape(text: str) -> str:
    return html.escape(str(text), quote=True)


def section(key: str, body: str) -> str:
    return f'<section id="{key}"><h2>{SECTIONS[key]}</h2>{body}</section>'


def figure_html(png: bytes | None, alt: str) -> str:
    """The embedded figure, or a note where it could not be drawn."""
    if png is None:
        return f'<p class="warning">The {escape(alt)} figure could not be drawn; its numbers are in the JSON.</p>'
    return f'<img class="figure" alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def word_highlights_html(words: dict[str, WordAttribution], choice: TokenChoice = TokenChoice()) -> str:
    """Prompt words coloured by their attribution to each mode's answer (or the chosen token), SAM and baseline on
    one scale, with a legend of that scale in Δ log p (hover a word for its value)."""
    colours = matplotlib.colormaps[SIGNED_CMAP]
    rows = {mode: words[mode].scores[choice.row(mode)] for mode in MODES if choice.row(mode) is not None}
    limit = symmetric_limit(*rows.values())
    blocks = []
    for mode in MODES:
        name = "SAM" if mode == "sam" else "baseline"
        if mode not in rows:
            blocks.append(f'<p><b>{name}</b> ({escape(choice.label(mode))}): nothing to attribute.</p>')
            continue
        spans = "".join(  # the colour map's darkest ends are left out so the words stay legible
            f'<span style="background:{to_hex(colours(0.5 + 0.4 * value / limit))};padding:0 .1em;border-radius:3px;line-height:1.9"'
            f' title="{value:+.3f}">{escape(piece)}</span>'
            for piece, value in zip(words[mode].pieces, rows[mode])
        )
        blocks.append(f'<p><b>{name}</b> → {escape(choice.label(mode))}:<br>{spans}</p>')
    stops = ", ".join(to_hex(colours(0.1 + 0.8 * step / 8)) for step in range(9))
    legend = (  # inline styles: the same HTML goes into the report and into the app's page
        '<div style="display:flex;flex-wrap:wrap;align-items:center;gap:.4em;font-size:.85em">'
        f'<span>−{limit:.2g}</span><span style="display:inline-block;width:10em;height:.8em;border-radius:2px;'
        f'background:linear-gradient(to right, {stops})"></span><span>+{limit:.2g}</span>'
        "<span>Δ log p when the word is removed (red: the word supports the answer)</span></div>"
    )
    return "".join(blocks) + legend


def thumbnail(image, size: int = 128) -> str:
    small = image.copy()
    small.thumbnail((size, size))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 760px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.meta { color: #555; } .warning { background: #fff4d6; border-left: 4px solid #e0a800; padding: .5em; }
nav ul { display: flex; flex-wrap: wrap; gap: .2em 1em; list-style: none; padding: 0; }
img.figure { width: 100%; max-width: 640px; display: block; }
.images { display: flex; gap: .5em; flex-wrap: wrap; } .images figure { margin: 0; text-align: center; font-size: .8em; }
table { border-collapse: collapse; } th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; }

"""
