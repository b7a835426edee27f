"""The out-of-domain check: shipped examples pass, photographs are flagged, calibrations are deterministic and
honest about what they cover, and every output (pipeline, CLI, report, app API) carries the result."""

import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image, ImageFilter

from sam_core.cli import main as cli_main
from sam_core.data import MiniLinkConfig, make_sample
from sam_core.domain import (
    CALIBRATION_FILE, DomainCalibration, DomainDetector, DomainReport, calibrate, detector_at, minilink_fingerprint,
)
from sam_core.domain import main as domain_main
from sam_core.generation import SamPipeline
from sam_core.loading import EMBEDDED_DEFAULT, ModelInfo, load_sam
from visualization import explain

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
EXAMPLES = sorted(Path("examples").glob("*/*.png"))


def photo_like(seed: int, size: int = 200) -> Image.Image:
    """Smooth shading and fine grain, as in a photograph: a blurred random colour field plus sensor noise."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    field = np.asarray(field.filter(ImageFilter.GaussianBlur(3)), dtype=np.int16)
    return Image.fromarray(np.clip(field + rng.normal(0, 3, field.shape), 0, 255).astype(np.uint8))


def minilink_image(index: int = 0) -> Image.Image:
    return make_sample(2, index, MiniLinkConfig(tasks=("group",))).images[0]


@pytest.fixture(scope="module")
def embedded_detector():
    return detector_at(str(EMBEDDED_DEFAULT))


def test_the_shipped_calibration_is_current_and_passes_every_shipped_example(embedded_detector):
    assert embedded_detector.calibration is not None, embedded_detector.note  # stale or missing: re-run calibrate
    report = embedded_detector.check(EXAMPLES)
    assert report.calibrated and len(report.scores) == len(EXAMPLES) >= 10
    assert report.out_of_domain == [], [str(EXAMPLES[i - 1]) for i in report.out_of_domain]
    assert report.warning is None and report.knows == "MiniLINK: coloured shapes on varied backgrounds"


def test_photographs_are_flagged_by_their_place_in_the_set(embedded_detector):
    images = [minilink_image(0), GRACE_HOPPER, minilink_image(1), photo_like(0), photo_like(1)]
    report = embedded_detector.check(images)
    assert report.out_of_domain == [2, 4, 5]
    assert all(report.scores[i - 1] > report.threshold for i in report.out_of_domain)
    assert report.warning == (
        "images 2, 4 and 5 look unlike what this model was trained on (MiniLINK: coloured shapes on varied backgrounds)"
    )
    assert embedded_detector.check([GRACE_HOPPER]).warning.startswith("image 1 looks unlike")
    assert embedded_detector.check([]).out_of_domain == []  # what the model knows, for a page with no images yet


def test_minilink_drawn_larger_is_still_minilink(embedded_detector):
    config = MiniLinkConfig(tasks=("group",), image_size=128)
    images = [image for index in range(5) for image in make_sample(2, index, config).images]
    assert embedded_detector.check(images).out_of_domain == []


def test_calibration_is_deterministic_and_survives_a_round_trip(tmp_path):
    settings = {"fit_samples": 1, "threshold_samples": 1, "references": 16, "render_sizes": (64,)}
    first, second = calibrate(**settings), calibrate(**settings)
    assert torch.equal(first.references, second.references) and torch.equal(first.scale, second.scale)
    assert first.threshold == second.threshold and first.provenance == second.provenance
    assert first.references.shape == (16, 11) and first.fingerprint == minilink_fingerprint()
    first.save(tmp_path / CALIBRATION_FILE)
    second.save(tmp_path / "again.safetensors")
    assert (tmp_path / CALIBRATION_FILE).read_bytes() == (tmp_path / "again.safetensors").read_bytes()
    loaded = DomainCalibration.load(tmp_path / CALIBRATION_FILE)
    assert torch.equal(loaded.references, first.references) and loaded.threshold == first.threshold
    assert loaded.provenance == first.provenance and loaded.knows == first.knows


def test_the_calibrate_and_check_commands(tmp_path, capsys):
    assert domain_main(["calibrate", "--model", str(tmp_path), "--fit-samples", "1", "--threshold-samples", "1",
                        "--render-sizes", "64"]) == 0
    assert (tmp_path / CALIBRATION_FILE).stat().st_size < 40_000 and "threshold" in capsys.readouterr().out
    assert domain_main(["calibrate", "--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().endswith("no such checkpoint directory")
    assert domain_main(["check", "--images", str(EXAMPLES[0]), str(GRACE_HOPPER)]) == 0
    assert json.loads(capsys.readouterr().out)["out_of_domain"] == [2]
    (tmp_path / "fake.png").write_text("not an image")
    assert domain_main(["check", "--images", str(tmp_path / "fake.png")]) == 2
    assert capsys.readouterr().err.strip() == "error: fake.png: not a readable image (UnidentifiedImageError)"


def test_models_without_a_usable_calibration_say_so_and_flag_nothing(tmp_path):
    def info(name, source):
        return ModelInfo(name=name, source=source, quantization="none", device="cpu", dtype="float32", adapter=None,
                         context="all", exchange_layer=1, num_query_tokens=4, guidance_identity=True)

    hub = DomainDetector.for_model(info("instructblip-vicuna-7b", "hub"))
    in_memory = DomainDetector.for_model(info("tiny", "local"))  # built in a test or a notebook: no directory
    local = detector_at(str(tmp_path))
    (tmp_path / "stale").mkdir()
    DomainCalibration(torch.zeros(4, 11), torch.ones(11), 1.0, fingerprint="made-for-another-minilink").save(
        tmp_path / "stale" / CALIBRATION_FILE
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CALIBRATION_FILE).write_text("not a calibration")
    stale, broken = detector_at(str(tmp_path / "stale")), detector_at(str(tmp_path / "broken"))
    for detector in (hub, in_memory, local, stale, broken):
        report = detector.check([GRACE_HOPPER])
        assert not report.calibrated and report.scores == [] and report.out_of_domain == [] and report.threshold is None
        assert report.note.startswith("not calibrated") and report.to_dict()["calibrated"] is False
    assert "InstructBLIP" in hub.knows
    assert "made for another MiniLINK" in stale.note and "re-run python -m sam_core.domain calibrate" in stale.note
    assert "is not a readable calibration" in broken.note


def test_generation_result_and_its_json_carry_the_report(tiny_checkpoint):
    pipeline = SamPipeline(load_sam(str(tiny_checkpoint)))
    result = pipeline.generate([GRACE_HOPPER, minilink_image()], "what is shared ?", max_new_tokens=2)
    assert isinstance(result.domain, DomainReport) and result.domain.calibrated is False  # the tiny model has none
    assert result.to_dict()["out_of_domain"] == [] and result.to_dict()["domain"]["calibrated"] is False
    shutil.copy(EMBEDDED_DEFAULT / CALIBRATION_FILE, tiny_checkpoint / CALIBRATION_FILE)  # the check reads pixels only
    try:
        detector_at.cache_clear()
        flagged = pipeline.generate([minilink_image(), GRACE_HOPPER], "what is shared ?", max_new_tokens=2)
        assert flagged.to_dict()["out_of_domain"] == [2] and flagged.to_dict()["domain"]["warning"].startswith("image 2 looks")
        report = explain(pipeline, [minilink_image(), GRACE_HOPPER], "what is shared ?", max_new_tokens=2)
        numbers = report.to_dict()
        assert numbers["out_of_domain"] == [2] and numbers["domain"]["threshold"] > 0
        html = report.to_html(numbers)
        assert 'id="out-of-domain"' in html and "image 2 looks unlike what this model was trained on" in html
    finally:
        (tiny_checkpoint / CALIBRATION_FILE).unlink()
        detector_at.cache_clear()


def test_the_cli_warns_in_one_line_and_reports_it_in_json(capsys, tiny_checkpoint):
    arguments = ["generate", "--images", str(EXAMPLES[0]), str(GRACE_HOPPER), "--task", "group", "--max-new-tokens", "3"]
    assert cli_main(arguments) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: image 2 looks unlike what this model was trained on (MiniLINK: coloured shapes on varied backgrounds)"
    ]
    assert cli_main([*arguments, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out_of_domain"] == [2] and result["domain"]["calibrated"] is True and len(result["domain"]["scores"]) == 2
    assert cli_main([*arguments, "--model", str(tiny_checkpoint)]) == 0  # no calibration: said, not silent
    assert "note: not calibrated: no out-of-domain check for this model" in capsys.readouterr().err


def test_the_app_api_reports_out_of_domain_images(app_url):
    client = Client(app_url, verbose=False)
    files = [handle_file(str(EXAMPLES[0])), handle_file(str(GRACE_HOPPER))]
    _, _, details = client.predict(files, "Group captioning", "", "", "greedy", 4, 0, api_name="/compare")
    details = json.loads(details)
    assert details["out_of_domain"] == [2] and details["domain"]["knows"].startswith("MiniLINK")
    numbers, _ = client.predict(files, "Group captioning", "", "", 3, 0, api_name="/explain")
    assert json.loads(numbers)["out_of_domain"] == [2]
    _, _, clean = client.predict([handle_file(str(path)) for path in EXAMPLES[:3]], "Group captioning", "", "", "greedy", 4, 0,
                                 api_name="/compare")
    assert json.loads(clean)["out_of_domain"] == []
