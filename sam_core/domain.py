"""Out-of-domain check: which images look unlike what the loaded model was trained on.

The embedded model knows only MiniLINK (DESIGN.md §3): flat coloured shapes with hard edges on six kinds of
background. Its own vision encoder cannot tell: trained on MiniLINK alone, it maps photographs onto MiniLINK-like
features (a Mahalanobis score on its patch features tells photographs from MiniLINK barely better than chance,
AUROC 0.53; docs/domain.md). What does tell is how an image is drawn: neighbouring MiniLINK pixels are equal, or
differ by a hard edge, one faint step (a gradient, a pattern of two near-equal colours) or a noise background's grain,
at any size it is drawn; a photograph's shade changes smoothly everywhere. Each image becomes a histogram of the
contrast between neighbouring pixels; its score is the distance to the nearest histogram of a MiniLINK dev image; the
threshold is the score that only a chosen share of other, held-out dev images exceed. Both are stored next to the
checkpoint (`domain.safetensors`, about 25 KB), written by

    python -m sam_core.domain calibrate --model checkpoints/minilink

A model without that file (the full InstructBLIP, which reads real photographs) gets a report that says it is not
calibrated and flags nothing.
"""

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .data import LOOKUP, NAME, SPLIT_SEEDS, MiniLink, MiniLinkConfig
from .loading import ModelInfo, SamLoadError, resolve_model
from .processing import ImageLoadError, load_image

CALIBRATION_FILE = "domain.safetensors"
MINILINK_KNOWS = "MiniLINK: coloured shapes on varied backgrounds"
# Bins of the largest channel difference between neighbouring 8-bit pixels: 0, 1, 2, 3–4, 5–7, …, 100 and more.
CONTRAST_EDGES = (1, 2, 3, 5, 8, 12, 20, 35, 60, 100)
ANALYSED_SIZE = 256  # larger images are box-averaged down by a whole factor first (a hard edge stays hard)
# Which faint step a MiniLINK background moves by (a gradient's, a pattern of two near-equal colours) is chance, so
# the shares of contrasts 1–7 are kept largest first: one faint step looks alike wherever it falls; shading spreads.
FAINT_BINS = slice(1, 5)
SHARE_FLOOR = 0.01  # histograms are log(share + floor): pair shares under about 1% count alike
REFERENCES = 512  # calibration images kept in the file, chosen to cover the dev images' histograms
FALSE_ALARM_RATE = 1e-4  # the share of held-out dev images whose score the threshold may leave above it
RENDER_SIZES = (64, 96, 128, 256)  # MiniLINK as the model reads it (64 px) and drawn larger, as people share it


@dataclass
class DomainReport:
    """Per image, how unlike the model's training images it looks (higher: less alike), and which images (1-based)
    score above the calibrated threshold. Without a calibration `scores` is empty, nothing is flagged and `note`
    says why."""

    scores: list[float]
    threshold: float | None
    out_of_domain: list[int]
    knows: str
    calibrated: bool
    note: str | None = None

    @property
    def warning(self) -> str | None:
        """One line for a person, or None when no image is flagged."""
        if not self.out_of_domain:
            return None
        flagged = self.out_of_domain
        which = f"image {flagged[0]} looks" if len(flagged) == 1 else (
            f"images {', '.join(map(str, flagged[:-1]))} and {flagged[-1]} look"
        )
        return f"{which} unlike what this model was trained on ({self.knows})"

    def to_dict(self) -> dict:
        return {**asdict(self), "scores": [round(score, 4) for score in self.scores], "warning": self.warning}


def contrast_histogram(image: Image.Image) -> torch.Tensor:
    """(bins,) log share of neighbouring pixel pairs (each pixel with its right and its lower neighbour) per bin of
    their largest channel difference (0–255), the faint bins largest first."""
    image = image.convert("RGB")
    factor = math.ceil(max(image.size) / ANALYSED_SIZE)
    if factor > 1:
        image = image.reduce(factor)
    rgb = np.asarray(image, dtype=np.int16)  # (H, W, 3)
    across = np.abs(np.diff(rgb, axis=1)).max(-1).ravel()  # (H·(W-1),)
    down = np.abs(np.diff(rgb, axis=0)).max(-1).ravel()  # ((H-1)·W,)
    pairs = np.concatenate([across, down])
    if len(pairs) == 0:  # a one-pixel image has no neighbours: nothing like MiniLINK
        pairs = np.full(1, 255)
    shares = np.bincount(np.searchsorted(CONTRAST_EDGES, pairs, side="right"), minlength=len(CONTRAST_EDGES) + 1) / len(pairs)
    shares[FAINT_BINS] = np.sort(shares[FAINT_BINS])[::-1]
    return torch.from_numpy(np.log(shares + SHARE_FLOOR)).float()


def contrast_histograms(images: Sequence) -> torch.Tensor:
    """(N, bins) for images as paths, arrays or PIL images."""
    return torch.stack([contrast_histogram(load_image(image)) for image in images])


def method_signature() -> str:
    """What a calibration's numbers depend on besides MiniLINK itself; a file made otherwise is refused."""
    return json.dumps({
        "edges": CONTRAST_EDGES, "faint": [FAINT_BINS.start, FAINT_BINS.stop], "analysed_size": ANALYSED_SIZE,
        "share_floor": SHARE_FLOOR,
    })


@lru_cache(maxsize=1)
def minilink_fingerprint() -> str:
    """A hash of one dev sample of every setting: it changes when MiniLINK's drawing changes, which makes a calibration
    stale."""
    digest = hashlib.sha256()
    for _, _, image in minilink_images(SPLIT_SEEDS["dev"], range(1), (64,)):
        digest.update(image.tobytes())
    return digest.hexdigest()[:16]


@dataclass
class DomainCalibration:
    """references: (M, bins) contrast histograms of MiniLINK dev images divided by `scale` (bins,), their spread over
    the fitted images; threshold: the score that `false_alarm_rate` of held-out dev images exceed."""

    references: torch.Tensor
    scale: torch.Tensor
    threshold: float
    knows: str = MINILINK_KNOWS
    false_alarm_rate: float = FALSE_ALARM_RATE
    fingerprint: str = ""
    provenance: dict = field(default_factory=dict)

    def scores(self, histograms: torch.Tensor) -> torch.Tensor:
        """(N, bins) → (N,) distance to the nearest calibration image."""
        return distances(histograms / self.scale, self.references).amin(1)  # (N, M) → (N,)

    def save(self, path: str | Path) -> None:
        """One metadata entry, its keys sorted: the same calibration always writes the same bytes."""
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.name not in ("references", "scale")}
        metadata = {"calibration": json.dumps({**values, "method": method_signature()}, sort_keys=True)}
        save_file({"references": self.references.contiguous(), "scale": self.scale.contiguous()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "DomainCalibration":
        """Read a calibration; ValueError names what is wrong with it."""
        try:
            with safe_open(str(path), "pt") as handle:
                values = json.loads((handle.metadata() or {}).get("calibration", "{}"))
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{Path(path).name} is not a readable calibration ({error.__class__.__name__})") from None
        if values.pop("method", None) != method_signature():
            raise ValueError(f"{Path(path).name} was made by another version of the check")
        return cls(references=tensors["references"], scale=tensors["scale"], **values)


def minilink_settings(min_images: int = 2, max_images: int = 8) -> dict[str, MiniLinkConfig]:
    """Every MiniLINK setting the models train or are scored in: version 2 (balanced decoys, 3–7 objects per image)
    and version 1 with decoys off (1–7 objects) and on (3–7), distractors alike 0, 0.5 and 1, N from `min_images` to
    `max_images`, and the single-image training tasks."""
    settings = {}
    for version, decoys, fewest in ((2, False, 3), (1, False, 1), (1, True, 3)):
        for objects in range(fewest, 8):
            for alike in (0.0, 0.5, 1.0):
                kind = "version 2" if version == 2 else f"version 1, {'decoys' if decoys else 'no decoys'}"
                label = f"{kind}, {objects} object{'s' if objects > 1 else ''}, alike {alike:g}"
                settings[label] = MiniLinkConfig(min_images, max_images, objects, objects, alike, decoys, version=version)
    settings["name task (1 image, 1 object)"] = MiniLinkConfig(tasks=(NAME,))
    settings["lookup task (1 image, 3-5 objects)"] = MiniLinkConfig(tasks=(LOOKUP,))
    return settings


def minilink_images(seed: int, indices: range, render_sizes: Sequence[int] = RENDER_SIZES) -> Iterator[tuple[str, int, Image.Image]]:
    """(setting, render size, image) for samples `indices` of every setting of split `seed`, drawn at each size;
    single-image settings take five samples per index, so each gives about as many images as a group setting."""
    for size in render_sizes:
        for label, config in minilink_settings().items():
            repeats = 5 if set(config.tasks) <= {NAME, LOOKUP} else 1
            split = MiniLink(seed, indices.stop * repeats, replace(config, image_size=size))
            for index in range(indices.start * repeats, indices.stop * repeats):
                for image in split[index].images:
                    yield label, size, image


def minilink_histograms(seed: int, indices: range, render_sizes: Sequence[int]) -> torch.Tensor:
    """(N, bins) contrast histograms of `minilink_images`, one image in memory at a time."""
    return torch.stack([contrast_histogram(image) for _, _, image in minilink_images(seed, indices, render_sizes)])


def covering_subset(points: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of `count` points, each chosen farthest from those chosen before (the first nearest the mean), so the
    few kept cover every kind of image the many did."""
    if len(points) <= count:
        return torch.arange(len(points))
    chosen = [int(distances(points.mean(0, keepdim=True), points)[0].argmin())]
    nearest = distances(points[chosen[-1]][None], points)[0]
    for _ in range(count - 1):
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, distances(points[chosen[-1]][None], points)[0])
    return torch.tensor(chosen)


def distances(rows: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) → (N, M) Euclidean distances (torch.cdist costs milliseconds of thread start-up at these sizes)."""
    return (rows[:, None] - references[None]).pow(2).sum(-1).sqrt()


def calibrate(
    fit_samples: int = 48,
    threshold_samples: int = 48,
    references: int = REFERENCES,
    false_alarm_rate: float = FALSE_ALARM_RATE,
    render_sizes: Sequence[int] = RENDER_SIZES,
    knows: str = MINILINK_KNOWS,
) -> DomainCalibration:
    """Fit on the first `fit_samples` dev samples of every setting at every render size and set the threshold on the
    next `threshold_samples` (all of the dev split, seed 1). Deterministic: the same arguments give the same file."""
    seed = SPLIT_SEEDS["dev"]
    fit = minilink_histograms(seed, range(fit_samples), render_sizes)
    scale = fit.std(0).clamp_min(1e-3)
    kept = covering_subset(fit / scale, references)
    calibration = DomainCalibration((fit / scale)[kept], scale, 0.0, knows, false_alarm_rate, minilink_fingerprint())
    held_out = minilink_histograms(seed, range(fit_samples, fit_samples + threshold_samples), render_sizes)
    scores = calibration.scores(held_out)
    calibration.threshold = float(torch.quantile(scores, 1 - false_alarm_rate, interpolation="higher"))
    calibration.provenance = {
        "split": f"MiniLINK dev, seed {seed}", "settings": len(minilink_settings()), "render_sizes": list(render_sizes),
        "fit_images": len(fit), "threshold_images": len(held_out),
        "held_out_above_threshold": int((scores > calibration.threshold).sum()),
    }
    return calibration


class DomainDetector:
    """The check for one loaded model: its calibration (None when it has none) and what the model knows."""

    def __init__(self, calibration: DomainCalibration | None, knows: str, note: str | None = None):
        self.calibration, self.knows, self.note = calibration, knows, note

    @classmethod
    def for_model(cls, info: ModelInfo) -> "DomainDetector":
        """The calibration stored next to the model's weights (local and embedded models only)."""
        if info.source == "hub":
            return hub_detector(info.name)
        try:
            location, _ = resolve_model(info.name)
        except SamLoadError:  # a model built in memory has no directory
            location = None
        return detector_at(location)

    def check(self, images: Sequence) -> DomainReport:
        """Score images (paths, arrays or PIL images) against the calibration."""
        if self.calibration is None:
            return DomainReport([], None, [], self.knows, False, self.note)
        if len(images) == 0:
            return DomainReport([], self.calibration.threshold, [], self.knows, True)
        scores = self.calibration.scores(contrast_histograms(images)).tolist()
        flagged = [index for index, score in enumerate(scores, start=1) if score > self.calibration.threshold]
        return DomainReport(scores, self.calibration.threshold, flagged, self.knows, True)


def hub_detector(name: str) -> DomainDetector:
    """Hub models are InstructBLIP checkpoints, trained on natural images: nothing to calibrate against here."""
    return DomainDetector(None, f"{name}: InstructBLIP's world (natural images and photographs)",
                          "not calibrated: no out-of-domain check for a hub model, nothing is flagged")


@lru_cache(maxsize=8)
def detector_at(location: str | None) -> DomainDetector:
    """A model directory's detector (cached: every request of a served model reads the same file)."""
    path = None if location is None else Path(location) / CALIBRATION_FILE
    uncalibrated = "not calibrated: no out-of-domain check for this model, nothing is flagged"
    if path is None or not path.exists():
        return DomainDetector(None, "unknown (no calibration)", uncalibrated)
    try:
        calibration = DomainCalibration.load(path)
    except ValueError as error:
        return DomainDetector(None, "unknown (no usable calibration)", f"{uncalibrated} ({error}; re-run {CALIBRATE_COMMAND})")
    if calibration.fingerprint != minilink_fingerprint():
        return DomainDetector(None, calibration.knows, f"{uncalibrated} (its calibration was made for another MiniLINK; "
                                                       f"re-run {CALIBRATE_COMMAND})")
    return DomainDetector(calibration, calibration.knows)


CALIBRATE_COMMAND = "python -m sam_core.domain calibrate --model DIR"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam_core.domain", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("calibrate", help=f"write {CALIBRATION_FILE} next to a MiniLINK-trained checkpoint")
    make.add_argument("--model", required=True, help="the checkpoint directory")
    make.add_argument("--fit-samples", type=int, default=48, help="dev samples per setting and size to fit on")
    make.add_argument("--threshold-samples", type=int, default=48,
                      help="further dev samples per setting and size to set the threshold on")
    make.add_argument("--false-alarm-rate", type=float, default=FALSE_ALARM_RATE)
    make.add_argument("--render-sizes", type=int, nargs="+", default=list(RENDER_SIZES), help="sizes MiniLINK is drawn at")
    check = commands.add_parser("check", help="score images against a model's calibration")
    check.add_argument("--model", default=None, help="embedded (default), a checkpoint directory or a hub id")
    check.add_argument("--images", nargs="+", required=True)
    args = parser.parse_args(argv)
    if args.command == "calibrate":
        if not Path(args.model).is_dir():
            print(f"error: {args.model}: no such checkpoint directory", file=sys.stderr)
            return 2
        calibration = calibrate(args.fit_samples, args.threshold_samples, false_alarm_rate=args.false_alarm_rate,
                                render_sizes=args.render_sizes)
        path = Path(args.model) / CALIBRATION_FILE
        calibration.save(path)
        print(f"wrote {path}: threshold {calibration.threshold:.4f}, {json.dumps(calibration.provenance)}")
        return 0
    try:
        location, source = resolve_model(args.model)
        detector = hub_detector(args.model) if source == "hub" else detector_at(location)
        report = detector.check(args.images)
    except (SamLoadError, ImageLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
