"""The page's own logic, in-process: what the API page documents, what a one-image analysis says, the session
store's bounds, the model notice, and limits that must not break the page (SAM_MAX_NEW_TOKENS=1)."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
from matplotlib import cbook
from PIL import Image

from app.domain import check_domain, model_notice, out_of_domain_markdown
from app.explain import draw, empty_views
from app.service import Decoding, SamService
from app.sessions import ReportStore
from app.ui import build_demo
from sam_core.processing import group_caption_prompt

EXAMPLE = sorted(str(p) for p in Path("tests/data/minilink-3").glob("*.png"))


@pytest.fixture(scope="module")
def service():
    from app.settings import AppSettings

    return SamService(dataclasses.replace(AppSettings.from_env(), max_images=4))


def test_the_api_page_names_describes_and_exemplifies_the_comparison_endpoints(service):
    info = build_demo(service).get_api_info()["named_endpoints"]
    assert set(info) == {"/compare", "/explain", "/evaluate", "/cancel_evaluation"}
    for name, expected in (("/compare", ["images", "task", "question", "captions", "preset", "max_new_tokens", "seed"]),
                           ("/explain", ["images", "task", "question", "captions", "max_new_tokens", "seed"])):
        endpoint = info[name]
        assert [p["parameter_name"] for p in endpoint["parameters"]] == expected
        assert endpoint["description"] and all(p["label"].startswith(p["parameter_name"]) for p in endpoint["parameters"])
        assert all(not r["label"].startswith("value_") for r in endpoint["returns"]), endpoint["returns"]
        examples = {p["parameter_name"]: p["example_input"] for p in endpoint["parameters"]}
        assert all(Path(f["path"]).parts[0] == "examples" for f in examples["images"])  # files a reader has
        assert "Hello!!" not in json.dumps(examples) and "sample_file.pdf" not in json.dumps(examples)


def test_one_image_gets_no_guidance_tab_figure_but_a_reason(service):
    report = service.explain([Image.open(EXAMPLE[0])], group_caption_prompt(1), Decoding(max_new_tokens=4))
    status, figure = draw(report, "guidance", "wide")
    assert "needs two or more images" in status and figure["visible"] is False
    status, figure, scores = draw(report, "alignment", "narrow")
    assert "needs two or more" in status and figure["visible"] is False and "nan" not in scores
    assert group_caption_prompt(1) == "Sum up the picture in a single statement."


def test_every_view_has_an_empty_state(service):
    cleared = empty_views()
    assert any(isinstance(v, str) and "Press **Explain**" in v for v in cleared)
    assert all(not (isinstance(v, dict) and v.get("visible")) for v in cleared)


def test_the_session_store_keeps_few_small_reports_for_a_while(service):
    clock = [0.0]
    store = ReportStore(max_sessions=3, ttl=60, clock=lambda: clock[0])
    report = service.explain(service.images(EXAMPLE), group_caption_prompt(3), Decoding(max_new_tokens=6))
    keys = [store.put(report) for _ in range(4)]
    assert store.get(keys[0]) is None and len(store) == 3  # the oldest session went at the cap
    kept = store.get(keys[-1]).report
    assert kept.capture.inputs is None and kept.capture.visual["sam"].patch_features is None
    assert len(pickle.dumps(kept)) < len(pickle.dumps(report)) / 2
    assert kept.png("attention") and kept.png("image-attribution")  # what re-plotting needs is there
    clock[0] = 61
    assert store.get(keys[-1]) is None and len(store) == 0  # and none outlives its time to live
    replaced = store.put(report)
    assert store.put(report, replaces=replaced) and len(store) == 1


def test_the_model_notice_and_out_of_domain_warnings(service):
    assert "MiniLINK" in model_notice(service) and "SAM_MODEL=instructblip-vicuna-7b" in model_notice(service)
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    shapes = [Image.open(p).convert("RGB") for p in sorted(Path("examples/group-sam-binds").glob("*.png"))]
    report = check_domain(service, [shapes[0], photo])
    assert report.out_of_domain == [2]
    assert out_of_domain_markdown(report).startswith("⚠️ **Image 2 looks unlike what this model was trained on (MiniLINK")
    assert out_of_domain_markdown(report).endswith("its answers about it mean nothing.")
    two = check_domain(service, [photo, shapes[0], photo])
    assert two.out_of_domain == [1, 3] and out_of_domain_markdown(two).endswith("its answers about them mean nothing.")
    assert out_of_domain_markdown(check_domain(service, shapes)) == ""


def test_one_new_token_at_most_still_builds_the_page(service):
    strict = SamService(dataclasses.replace(service.settings, max_new_tokens=1))
    assert isinstance(build_demo(strict), gr.Blocks)


def test_the_analysis_stack_is_imported_only_when_first_used():
    """Start-up imports neither matplotlib nor captum: only Explain needs them."""
    code = ("import sys, app.ui, app.service, sam_core.cli; "
            "print(sorted(m for m in ('matplotlib', 'captum', 'visualization') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
