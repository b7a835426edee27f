"""What the page says about the loaded model's domain: the one-line notice at the top and the per-image
out-of-domain warnings, built on `SamPipeline.check_domain` (sam_core/domain.py)."""

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from sam_core.data import COLOURS

from .service import SamService

MODEL_NOTICE = (
    "ℹ️ **This demo's tiny model knows only MiniLINK: coloured shapes on varied backgrounds.** Photographs get "
    "meaningless answers (each is flagged). For photographs, run the full model on a GPU: "
    "`SAM_MODEL=instructblip-vicuna-7b python app.py` (README)."
)


def model_notice(service: SamService) -> str:
    """The one-line notice at the top of the page: what the loaded model knows (only for the embedded model)."""
    return MODEL_NOTICE if service.info.get("source") == "embedded" else ""


def check_domain(service: SamService, images: list[Image.Image]):
    """The loaded model's DomainReport for these images (None before a lazily loaded model is ready)."""
    if service.pipeline is None or not images:
        return None
    check = getattr(service.pipeline, "check_domain", None)
    if check is None:  # DELETE AT MERGE (with the stand-in below)
        return palette_check(images) if service.info.get("source") == "embedded" else None
    with service.lock:
        return check(images)


def out_of_domain_markdown(report, consequence: str = "its answers about them mean nothing") -> str:
    """One warning line naming the images the model does not know, or '' when there are none."""
    if report is None or not report.out_of_domain:
        return ""
    flagged = report.out_of_domain
    names = f"Image {flagged[0]}" if len(flagged) == 1 else "Images " + ", ".join(map(str, flagged[:-1])) + f" and {flagged[-1]}"
    verb = "looks" if len(flagged) == 1 else "look"
    return f"⚠️ **{names} {verb} unlike anything this model was trained on** ({report.knows}): {consequence}."


# ------------------------------------------------------------------ stand-in until sam_core/domain.py lands
# DELETE AT MERGE: the detector (`SamPipeline.check_domain`) is built on another branch; until it is merged,
# this uncalibrated heuristic (the share of pixels in MiniLINK's palette colours) gives the page something to warn
# with. It is not the measured detector and states so (`calibrated=False`).


@dataclass
class DomainReport:
    scores: list[float]
    threshold: float | None
    out_of_domain: list[int]  # 1-based image indices
    knows: str
    calibrated: bool

    def to_dict(self) -> dict:
        return asdict(self)


PALETTE = np.array(list(COLOURS.values()), dtype=np.int16)
PALETTE_SHARE = 0.02


def palette_check(images: list[Image.Image]) -> DomainReport:
    scores = []
    for image in images:
        pixels = np.asarray(image.convert("RGB").resize((64, 64), Image.NEAREST), dtype=np.int16).reshape(-1, 1, 3)
        distance = np.abs(pixels - PALETTE[None]).max(axis=-1).min(axis=-1)
        scores.append(float((distance <= 2).mean()))
    flagged = [index + 1 for index, score in enumerate(scores) if score < PALETTE_SHARE]
    return DomainReport(scores, PALETTE_SHARE, flagged, "MiniLINK: coloured shapes on varied backgrounds", calibrated=False)
