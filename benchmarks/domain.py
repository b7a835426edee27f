"""Out-of-domain check: held-out MiniLINK of every setting vs every photograph available offline.

Scores every image with the calibration stored next to the model (`python -m sam_core.domain calibrate`): MiniLINK's
test split (seed 2) in every setting and render size, the shipped examples, every photograph found on this machine
(which sources were found is printed), and, in a separate table the check was not tuned on, drawings that are not
MiniLINK (other shapes, icons, text, screenshots, logos, wallpapers). AUROC: the chance that a photograph of the
source scores above a held-out MiniLINK image. Last, the check's cost next to a 4-image comparison, and the vision
encoder's own features as the alternative detector (docs/domain.md).

    pip install -r benchmarks/requirements-domain.txt        # scikit-image, scikit-learn: their sample photographs
    apt-get install opencv-doc mate-backgrounds gnome-backgrounds   # optional: more photographs and drawings
    git --git-dir <a clone of McCartney01/SAM>/.git archive HEAD images | tar -x -C /tmp/sam-authors  # optional
    python -m benchmarks.domain [--model checkpoints/minilink] [--samples 6] [--authors /tmp/sam-authors/images]
"""

import argparse
import io
import math
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sam_core.data import SPLIT_SEEDS, MiniLinkConfig, make_sample
from sam_core.domain import DomainDetector, contrast_histograms, minilink_images, minilink_settings
from sam_core.generation import SamPipeline
from sam_core.loading import load_sam
from sam_core.processing import load_image

from .common import round_robin

REPO = Path(__file__).resolve().parent.parent
# The first test samples of every setting were looked at while the check was designed; the tables use later ones.
TEST_START = 100
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
BACKGROUNDS = Path("/usr/share/backgrounds")
OPENCV_PHOTOS = """aero1.jpg aero3.jpg aloeL.jpg aloeR.jpg apple.jpg baboon.jpg basketball1.png basketball2.png blox.jpg
board.jpg box.png box_in_scene.png building.jpg butterfly.jpg chicky_512.png ela_modified.jpg ela_original.jpg fruits.jpg
graf1.png graf3.png home.jpg left.jpg leuvenA.jpg leuvenB.jpg licenseplate_motion.jpg messi5.jpg orange.jpg pca_test1.jpg
right.jpg rubberwhale1.png rubberwhale2.png smarties.png squirrel_cls.jpg stuff.jpg sudoku.png text_defocus.jpg
text_motion.jpg""".split()
OPENCV_DRAWINGS = """Blender_Suzanne1.jpg Blender_Suzanne2.jpg HappyFish.jpg LinuxLogo.jpg WindowsLogo.jpg aloeGT.png cards.png
chessboard.png detect_blob.png digits.png ellipses.jpg gradient.png imageTextN.png imageTextR.png mask.png ml.png notes.png
opencv-logo-white.png opencv-logo.png pic1.png pic2.png pic3.png pic4.png pic5.png pic6.png starry_night.jpg templ.png
tmpl.png""".split()
SKIMAGE_PHOTOS = """astronaut.png brick.png camera.png cell.png chelsea.png clock_motion.png coffee.png coins.png grass.png
gravel.png hubble_deep_field.jpg ihc.png microaneurysms.png moon.png motorcycle_left.png motorcycle_right.png page.png
retina.jpg rocket.jpg text.png""".split()
SKIMAGE_DRAWINGS = "chessboard_GRAY.png chessboard_RGB.png color.png horse.png logo.png phantom.png".split()


def package_folder(module: str, *parts: str) -> Path | None:
    try:
        package = __import__(module, fromlist=["__file__"])
    except ImportError:
        return None
    return Path(package.__file__).parent.joinpath(*parts)


def files(folder: Path | None, names=None, pattern: str = "*") -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    found = sorted(folder.glob(pattern)) if names is None else [folder / name for name in names]
    return [path for path in found if path.is_file()]


def lfw_faces() -> list[Image.Image]:
    """scikit-image's 200 grayscale 25×25 face crops (Labeled Faces in the Wild)."""
    path = package_folder("skimage", "data", "lfw_subset.npy")
    if path is None or not path.exists():
        return []
    return [Image.fromarray((face * 255).astype(np.uint8)) for face in np.load(path)]


def photo_sources(authors: str | None) -> dict[str, tuple[str, list]]:
    """Every photograph found offline, by source: (seen while the check was designed: yes/no, images)."""
    matplotlib_data = package_folder("matplotlib", "mpl-data", "sample_data")
    skimage_data = package_folder("skimage", "data")
    chessboards = files(OPENCV, pattern="left[0-9]*.jpg") + files(OPENCV, pattern="right[0-9]*.jpg")
    sklearn_images = files(package_folder("sklearn", "datasets", "images"), pattern="*.jpg")
    sources = {
        "matplotlib sample data (grace_hopper.jpg)": ("yes", files(matplotlib_data, ["grace_hopper.jpg"])),
        "scikit-image data (astronaut, coffee, chelsea, ...)": ("yes", files(skimage_data, SKIMAGE_PHOTOS)),
        "scikit-image LFW faces (25x25 px, grayscale)": ("no", lfw_faces()),
        "scikit-learn sample images (china, flower)": ("no", sklearn_images),
        "Debian opencv-doc photographs (baboon, fruits, building, ...)": ("yes", files(OPENCV, OPENCV_PHOTOS)),
        "Debian opencv-doc chessboard calibration photos": ("yes", chessboards),
        "Debian mate-backgrounds nature photographs": ("no", files(BACKGROUNDS / "mate" / "nature", pattern="*.jpg")),
    }
    if authors:  # posters and cartoons (1-8) people try first; their figures go with the drawings
        sources["the authors' example images (McCartney01/SAM images/1-8)"] = ("yes", [
            path for path in files(Path(authors)) if path.stem.isdigit()
        ])
    return sources


def rendered_shapes(count: int, seed: int = 0) -> list[Image.Image]:
    """Shapes MiniLINK never draws (pentagons, arrows, ellipses, bolts), any colour, on flat backgrounds."""
    rng = random.Random(f"shapes-{seed}")
    images = []
    for _ in range(count):
        size = rng.choice([64, 128, 256])
        image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 4)):
            cx, cy, r = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size, rng.uniform(0.08, 0.2) * size
            colour = tuple(rng.randrange(256) for _ in range(3))
            kind = rng.choice(["pentagon", "octagon", "arrow", "ellipse", "bolt"])
            if kind == "ellipse":
                draw.ellipse([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=colour)
                continue
            corners = {"pentagon": 5, "octagon": 8}.get(kind)
            if corners:
                points = [(math.cos(2 * math.pi * k / corners), math.sin(2 * math.pi * k / corners)) for k in range(corners)]
            elif kind == "arrow":
                points = [(-1, -0.3), (0.2, -0.3), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.3), (-1, 0.3)]
            else:
                points = [(-0.2, -1), (0.5, -1), (0.1, -0.1), (0.6, -0.1), (-0.4, 1), (-0.1, 0.2), (-0.6, 0.2)]
            draw.polygon([(cx + r * x, cy + r * y) for x, y in points], fill=colour)
        images.append(image)
    return images


def rendered_icons(count: int, seed: int = 0) -> list[Image.Image]:
    """Anti-aliased flat icons: outlined and filled primitives drawn at 4x and downsampled, as icon sets are."""
    rng = random.Random(f"icons-{seed}")
    images = []
    for _ in range(count):
        size = rng.choice([48, 64, 128])
        big = Image.new("RGB", (4 * size, 4 * size), rng.choice(["white", (240, 240, 240), (33, 33, 33)]))
        draw = ImageDraw.Draw(big)
        for _ in range(rng.randint(2, 5)):
            colour = tuple(rng.randrange(256) for _ in range(3))
            (x0, x1), (y0, y1) = (sorted(rng.uniform(0.1, 0.9) * 4 * size for _ in range(2)) for _ in range(2))
            shape = rng.choice(["ellipse", "rounded", "line"])
            width = rng.randint(4, 16)
            if shape == "ellipse":
                draw.ellipse([x0, y0, x1 + 4, y1 + 4], outline=colour, width=width, fill=colour if rng.random() < 0.5 else None)
            elif shape == "rounded":
                draw.rounded_rectangle([x0, y0, x1 + 4, y1 + 4], radius=width * 2, outline=colour, width=width)
            else:
                draw.line([x0, y0, x1, y1], fill=colour, width=width)
        images.append(big.resize((size, size), Image.LANCZOS))
    return images


def rendered_text(count: int, seed: int = 0) -> list[Image.Image]:
    """Lines of text in DejaVu Sans (or PIL's default font) on plain backgrounds."""
    rng = random.Random(f"text-{seed}")
    words = "the quick brown fox jumps over a lazy dog while semantic alignment links every picture".split()
    font_path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    images = []
    for _ in range(count):
        size = rng.choice([(128, 128), (256, 128), (256, 256)])
        image = Image.new("RGB", size, rng.choice(["white", (255, 250, 230), (30, 30, 40)]))
        draw = ImageDraw.Draw(image)
        font_size = rng.randint(10, 24)
        font = ImageFont.truetype(str(font_path), font_size) if font_path.exists() else ImageFont.load_default()
        ink = (20, 20, 20) if image.getpixel((0, 0)) != (30, 30, 40) else (230, 230, 230)
        for row in range(0, size[1] - font_size, font_size + 4):
            draw.text((4, row), " ".join(rng.choice(words) for _ in range(6)), fill=ink, font=font)
        images.append(image)
    return images


SCREENSHOT_PAGES = [
    "<h1>Settings</h1><form><label>Name <input value='Ada'></label><br><label><input type=checkbox checked> e-mail me"
    "</label><br><select><option>English</option></select><button>Save</button></form>",
    "<h2>Results</h2><table border=1>" + "".join(f"<tr><td>run {k}</td><td>{k * 7 % 13}.{k}</td></tr>" for k in range(12))
    + "</table>",
    "<article><h1>A short article</h1>" + "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 6 + "</p>"
    "<ul><li>one</li><li>two</li></ul></article>",
    "<div style='display:flex;gap:8px'>" + "".join(
        f"<div style='width:120px;height:90px;background:hsl({k * 40},60%,60%);border-radius:12px'></div>" for k in range(8)
    ) + "</div><p>Dashboard</p>",
]


def screenshots() -> list[Image.Image]:
    """Headless Debian chromium screenshots of small web pages (none without chromium)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return []
    images = []
    with tempfile.TemporaryDirectory() as folder:
        for index, body in enumerate(SCREENSHOT_PAGES):
            page, shot = Path(folder, f"{index}.html"), Path(folder, f"{index}.png")
            page.write_text(f"<html><body style='font-family:sans-serif'>{body}</body></html>")
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1000,700",
                 f"--screenshot={shot}", page.as_uri()],
                capture_output=True, timeout=120, check=False,
            )
            if shot.exists():
                images.append(Image.open(shot).convert("RGB"))
    return images


def drawing_sources(authors: str | None) -> dict[str, tuple[str, list]]:
    """Images that are neither MiniLINK nor photographs: reported, never tuned on."""
    logos = files(package_folder("matplotlib", "mpl-data", "sample_data"), ["logo2.png", "Minduka_Present_Blue_Pack.png"])
    wallpapers = files(BACKGROUNDS / "mate" / "abstract") + files(BACKGROUNDS / "mate" / "desktop")
    sources = {
        "other shapes (PIL: pentagons, arrows, ellipses, bolts)": ("no", rendered_shapes(40)),
        "icons (PIL, anti-aliased)": ("no", rendered_icons(40)),
        "text (PIL, DejaVu Sans)": ("no", rendered_text(20)),
        "screenshots (headless chromium)": ("no", screenshots()),
        "matplotlib logos": ("no", logos),
        "scikit-image drawings (horse, logo, phantom, ...)": ("yes", files(package_folder("skimage", "data"), SKIMAGE_DRAWINGS)),
        "Debian opencv-doc drawings, logos, renders": ("yes", files(OPENCV, OPENCV_DRAWINGS)),
        "Debian gnome-backgrounds (illustrations)": ("no", files(BACKGROUNDS / "gnome", pattern="*.webp")),
        "Debian mate-backgrounds abstract and desktop": ("no", wallpapers),
    }
    if authors:
        figures = [path for path in files(Path(authors)) if not path.stem.isdigit()]
        sources["the authors' paper figures (case.png, method.png)"] = ("yes", figures)
    return sources


def minilink_variants(samples: int) -> dict[str, list]:
    """MiniLINK as people may hand it over, outside the calibration: resaved as JPEG, upscaled, drawn at 512 px
    (a quarter of the test samples per setting)."""
    samples = max(1, samples // 4)
    images = [image for _, _, image in minilink_images(SPLIT_SEEDS["test"], test_indices(samples), (64,))]
    variants = {}
    jpegs = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        jpegs.append(Image.open(buffer).convert("RGB"))
    variants["MiniLINK test, resaved as JPEG (quality 90)"] = jpegs
    variants["MiniLINK test, 64 px upscaled x4 (bicubic)"] = [image.resize((256, 256), Image.BICUBIC) for image in images]
    variants["MiniLINK test, 64 px upscaled x4 (nearest)"] = [image.resize((256, 256), Image.NEAREST) for image in images]
    variants["MiniLINK test, drawn at 512 px"] = [
        image for _, _, image in minilink_images(SPLIT_SEEDS["test"], test_indices(samples), (512,))
    ]
    return variants


def test_indices(samples: int) -> range:
    return range(TEST_START, TEST_START + samples)


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney statistic)."""
    if len(negatives) == 0 or len(positives) == 0:
        return float("nan")
    order = np.concatenate([negatives, positives]).argsort(kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([negatives, positives])[order]
    ranks[order] = np.arange(1, len(order) + 1)
    for value in np.unique(values):  # average ranks over ties
        tied = order[values == value]
        ranks[tied] = ranks[tied].mean()
    positive_ranks = ranks[len(negatives):].sum()
    return float((positive_ranks - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def score(detector: DomainDetector, images: list) -> np.ndarray:
    return detector.calibration.scores(contrast_histograms(images)).numpy() if images else np.zeros(0)


def flag_count(scores: np.ndarray, threshold: float) -> str:
    flagged = scores > threshold
    return f"{int(flagged.sum())}/{len(scores)} ({100 * flagged.mean():.1f}%)"


def print_sources(title: str, sources: dict, detector: DomainDetector, minilink: np.ndarray) -> dict[str, np.ndarray]:
    threshold = detector.calibration.threshold
    print(f"\n{title}\n")
    print("| source | seen while designing | n | AUROC vs MiniLINK test | flagged |")
    print("|---|---|---|---|---|")
    found, everything = {}, []
    for name, (seen, images) in sources.items():
        if not images:
            print(f"| {name} | {seen} | 0 (not found on this machine) | – | – |")
            continue
        scores = score(detector, images)
        found[name] = scores
        everything.append(scores)
        print(f"| {name} | {seen} | {len(scores)} | {auroc(minilink, scores):.4f} | {flag_count(scores, threshold)} |")
    if everything:
        scores = np.concatenate(everything)
        print(f"| **all** | | {len(scores)} | {auroc(minilink, scores):.4f} | {flag_count(scores, threshold)} |")
    return found


def minilink_table(detector: DomainDetector, samples: int) -> np.ndarray:
    """False alarms on MiniLINK's test split, by setting and by render size."""
    threshold = detector.calibration.threshold
    by_setting, by_size, labels, sizes = {}, {}, [], []
    records = [  # histograms, not images: thousands of images at 256 px do not fit in memory
        (label, size, contrast_histograms([image]))
        for label, size, image in minilink_images(SPLIT_SEEDS["test"], test_indices(samples))
    ]
    scores = detector.calibration.scores(torch.cat([histogram for _, _, histogram in records])).numpy()
    for (label, size, _), value in zip(records, scores):
        by_setting.setdefault(label, []).append(value)
        by_size.setdefault(size, []).append(value)
    print(f"\nMiniLINK test split (seed {SPLIT_SEEDS['test']}, samples {TEST_START}-{TEST_START + samples - 1} of every "
          f"setting and render size; N = 2-8 images per group)\n")
    print("| setting | n | false alarms | rate |")
    print("|---|---|---|---|")
    for label in minilink_settings():
        values = np.array(by_setting[label])
        print(f"| {label} | {len(values)} | {int((values > threshold).sum())} | {100 * (values > threshold).mean():.2f}% |")
    print("\n| render size | n | false alarms | rate |")
    print("|---|---|---|---|")
    for size, values in by_size.items():
        values = np.array(values)
        print(f"| {size} px | {len(values)} | {int((values > threshold).sum())} | {100 * (values > threshold).mean():.2f}% |")
    print(f"| **all** | {len(scores)} | {int((scores > threshold).sum())} | {100 * (scores > threshold).mean():.3f}% |")
    return scores


def examples_row(detector: DomainDetector) -> None:
    images = sorted((REPO / "examples").glob("*/*.png"))
    scores = score(detector, images)
    threshold = detector.calibration.threshold
    flagged = [f"{path.parent.name}/{path.name}" for path, value in zip(images, scores) if value > threshold]
    print(f"\nShipped examples (examples/*/*.png): {len(images)} images, flagged: {', '.join(flagged) or 'none'}; "
          f"highest score {scores.max():.3f} (threshold {detector.calibration.threshold:.3f})")


@torch.no_grad()
def encoder_baseline(pipeline: SamPipeline, samples: int, photos: list) -> None:
    """The alternative built on the model's own vision encoder: Mahalanobis distance of each patch feature to a
    Gaussian fitted on MiniLINK dev images' patch features, averaged over the patches."""
    def features(images):
        pixels = pipeline.processor.image_processor(images, return_tensors="pt")["pixel_values"].to(pipeline.device)
        batches = [pixels[start : start + 256][None] for start in range(0, len(pixels), 256)]  # (1, n, 3, H, W) each
        return torch.cat([pipeline.model.encode_images(batch)[0, :, 1:].float().cpu() for batch in batches])  # no CLS

    fit = features([image for _, _, image in minilink_images(SPLIT_SEEDS["dev"], range(samples), (64,))]).flatten(0, 1)
    mean = fit.mean(0)
    covariance = torch.cov((fit - mean).T)
    precision = torch.linalg.inv(covariance + 1e-3 * covariance.trace() / len(mean) * torch.eye(len(mean)))

    def scores(images):
        centred = features(images) - mean  # (N, P, D)
        return torch.einsum("npd,de,npe->np", centred, precision, centred).mean(1).numpy()

    minilink = scores([image for _, _, image in minilink_images(SPLIT_SEEDS["test"], test_indices(samples), (64,))])
    photo_scores = scores([load_image(image) for image in photos])
    print(f"\nThe vision encoder's own features instead (mean Mahalanobis distance of its patch features, Gaussian fitted "
          f"on {len(fit) // 64} MiniLINK dev images at 64 px): AUROC {auroc(minilink, photo_scores):.4f} on all "
          f"{len(photo_scores)} photographs vs {len(minilink)} MiniLINK test images at 64 px")


def cost_row(pipeline: SamPipeline, repeats: int) -> None:
    """The check's time next to a 4-image comparison on the embedded model (its time is part of `generate`'s)."""
    sample = make_sample(SPLIT_SEEDS["test"], 0, MiniLinkConfig(min_images=4, max_images=4, tasks=("group",)))
    photo = files(package_folder("matplotlib", "mpl-data", "sample_data"), ["grace_hopper.jpg"])
    photos = [load_image(path) for path in photo] * 4
    functions = {
        "check, 4 MiniLINK images": lambda: pipeline.check_domain(sample.images),
        "check, 4 photographs (512x600)": lambda: pipeline.check_domain(photos),
        "comparison (SAM + baseline, greedy, 20 tokens)": lambda: pipeline.generate(
            sample.images, sample.instruction, mode="compare", max_new_tokens=20, min_new_tokens=20
        ),
    }
    times = round_robin(functions, repeats)
    compare = times["comparison (SAM + baseline, greedy, 20 tokens)"]
    print(f"\nCost per request (CPU, {torch.get_num_threads()} threads, median of {repeats} round-robin runs)\n")
    print("| step | ms | share of the comparison |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {1000 * seconds:.1f} | {100 * seconds / compare:.1f}% |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="embedded (default) or a checkpoint directory with domain.safetensors")
    parser.add_argument("--samples", type=int, default=24, help="MiniLINK test samples per setting and render size")
    parser.add_argument("--authors", default=None, help="a folder with the authors' images/ (McCartney01/SAM)")
    parser.add_argument("--repeats", type=int, default=10, help="timing repeats of the cost table")
    args = parser.parse_args(argv)
    pipeline = SamPipeline(load_sam(args.model))
    detector = DomainDetector.for_model(pipeline.info)
    if detector.calibration is None:
        raise SystemExit(f"{pipeline.info.name}: {detector.note}")
    calibration = detector.calibration
    print(f"Model {pipeline.info.name}; calibration: threshold {calibration.threshold:.4f} (target false-alarm rate "
          f"{calibration.false_alarm_rate:g} on held-out dev images), {len(calibration.references)} reference histograms, "
          f"made from {calibration.provenance}")
    minilink = minilink_table(detector, args.samples)
    examples_row(detector)
    photos = print_sources("Photographs (every source found offline) and the authors' example images",
                           photo_sources(args.authors), detector, minilink)
    print_sources("Drawings that are not MiniLINK (reported, not tuned on)", drawing_sources(args.authors), detector, minilink)
    print_sources("MiniLINK handed over differently (outside the calibration)", {
        name: ("no", images) for name, images in minilink_variants(args.samples).items()
    }, detector, minilink)
    photo_images = [image for name, (_, images) in photo_sources(args.authors).items() if name in photos for image in images]
    encoder_baseline(pipeline, args.samples, photo_images)
    cost_row(pipeline, args.repeats)


if __name__ == "__main__":
    main()
