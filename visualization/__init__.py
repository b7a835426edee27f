"""SAM studio's analysis views: pure functions from a captured run to numpy arrays and matplotlib figures.

    run = capture(pipeline, images, prompt)                    # one compare-mode pass, attentions kept
                                                                # (modes=("sam",) for one mode)
    guidance_maps(run.visual["sam"])                           # α per image on its patch grid
    compare_attention(run.visual["sam"], run.visual["baseline"], layer=None, head="mean", query="mean")
    image_attribution(pipeline, run, "sam"); patch_attribution(...); word_attribution(...)   # captum
    alignment(run.visual["sam"])                                # cross-image token similarity
    report = explain(pipeline, images, prompt)                 # all of it
    report.png("attention", NARROW); report.write("report.html")   # one figure for a phone; HTML + JSON

Imports flow one way: visualization uses sam_core, never the reverse.
"""

from .alignment import Alignment, alignment, plot_alignment
from .attention import (
    AttentionComparison, AttentionMaps, attention_maps, compare_attention, cross_attention_layers,
    plot_attention_comparison, plot_attention_maps,
)
from .attribution import (
    ImageAttribution, PatchAttribution, TokenChoice, WordAttribution, default_window, image_attribution,
    patch_attribution, plot_image_attribution, plot_patch_attribution, word_attribution,
)
from .capture import Capture, capture
from .common import LAYOUTS, NARROW, WIDE, Layout, figure_png
from .guidance import GuidanceMaps, context_images, guidance_maps, plot_guidance
from .report import FIGURES, NO_GUIDANCE, Report, explain, word_highlights_html

__all__ = [
    "FIGURES", "LAYOUTS", "NARROW", "NO_GUIDANCE", "WIDE", "Alignment", "AttentionComparison",
    "AttentionMaps", "Capture", "GuidanceMaps", "ImageAttribution", "Layout", "PatchAttribution", "Report",
    "TokenChoice", "WordAttribution", "alignment", "attention_maps", "capture", "compare_attention", "context_images",
    "cross_attention_layers", "default_window", "explain", "figure_png", "guidance_maps", "image_attribution",
    "patch_attribution", "plot_alignment", "plot_attention_comparison", "plot_attention_maps", "plot_guidance",
    "plot_image_attribution", "plot_patch_attribution", "word_attribution", "word_highlights_html",
]
