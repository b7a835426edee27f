"""What the page says about the loaded model's domain: the one-line notice at the top and the per-image
out-of-domain warnings, built on `SamPipeline.check_domain` (sam_core/domain.py)."""

from PIL import Image

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
    return service.pipeline.check_domain(images)  # no model call: it need not wait for the model lock


def out_of_domain_markdown(report, consequence: str = "its answers about {them} mean nothing") -> str:
    """One warning line naming the images the model does not know, or '' when there are none."""
    warning = report.warning if report is not None else None
    if not warning:
        return ""
    them = "it" if len(report.out_of_domain) == 1 else "them"
    return f"⚠️ **{warning[0].upper()}{warning[1:]}**: {consequence.format(them=them)}."
