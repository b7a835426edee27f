"""Hostile input at the app's edges: markup in a prompt, paths and secrets on their way to the log, requests Gradio
itself refuses, oversized uploads. In-process; tests/test_app.py drives the same through HTTP."""

import asyncio
import io
import json
import logging
import sys

import gradio as gr
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from transformers.utils import logging as transformers_logging

from app.privacy import public_text, redact_output, server_paths
from app.refusals import UploadLimit
from app.service import Decoding, SamService
from app.ui import build_demo
from test_faults import EXAMPLE


def test_the_reports_embedded_json_survives_markup_in_the_prompt(settings):
    service = SamService(settings)
    prompt = "what <!--<script>alert(1)</script> is shared ?"
    report = service.explain(service.images(EXAMPLE), prompt, Decoding(max_new_tokens=2))
    html = report.to_html(report.to_dict())
    data = html.split('<script type="application/json" id="report-data">')[1].split("</script>")[0]
    assert "<" not in data and json.loads(data)["prompt"] == prompt


@pytest.mark.parametrize("text, public", [
    ('File "/srv/app/sam_core/loading.py", line 3', 'File "loading.py", line 3'),
    ("PYTHONPATH=/srv/a:/srv/b", "PYTHONPATH=a:b"),
    ("No such file:/tmp/x/y.png", "No such file:y.png"),
    ("[Errno 2] No such file or directory: '/tmp/my folder/photo 1.png'", "[Errno 2] No such file or directory: 'photo 1.png'"),
    ("/home/u/My Documents/photo.png is not an image", "photo.png is not an image"),
    ("file:///etc/passwd", "file:passwd"),
    ("see https://huggingface.co/a/b or a/b, ~/x, 3 / 4", "see https://huggingface.co/a/b or a/b, ~/x, 3 / 4"),
])
def test_paths_after_colons_and_with_spaces_are_shortened(text, public):
    assert public_text(text) == public and not server_paths(public)


def test_log_handlers_made_before_start_up_are_redacted_too(monkeypatch):
    """transformers makes its log handler on import, bound to the stderr of that moment: redacting stderr later
    must reach it as well."""
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    stderr = io.StringIO()
    (handler,) = [h for h in logging.getLogger("transformers").handlers if isinstance(h, logging.StreamHandler)]
    monkeypatch.setattr(handler, "stream", stderr)  # as if transformers had been imported by `python app.py`
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    redact_output()
    transformers_logging.get_logger("transformers.loading").warning("no weights in /srv/models/my model/x.bin (hf_abcdefghijklmnop)")
    assert stderr.getvalue() == "[transformers] no weights in x.bin (***)\n"


def page_event(demo, name: str):
    return next(block_fn for block_fn in demo.fns.values() if block_fn.name == name)


def test_gradios_own_checks_refuse_in_one_line_without_a_traceback(settings, caplog):
    """Values only a hand-made request can send (a number beyond a slider, a choice not offered, a value of the
    wrong type, too few values) are refused like the app's own checks: one line. (Files nobody uploaded are checked
    only by a launched app: tests/test_app.py.)"""
    demo = build_demo(SamService(settings))
    compare = page_event(demo, "stream_answers")
    caption_count = len(compare.inputs) - 8  # gallery, task, question, the captions, then 5 decoding values
    valid = [None, "Group captioning", "", *[""] * caption_count, "greedy", 8, 1.0, 1.0, 0]

    def with_value(index, value):
        return valid[:index] + [value] + valid[index + 1:]

    cases = [
        (with_value(0, "x"), "Images (in order): not a valid value (expected uploaded file data)."),
        (with_value(1, "Poetry" * 10_000), "The request's values were refused: Value: 'PoetryPoetry"),
        (with_value(len(valid) - 4, 10_000), "The request's values were refused: Value 10000 is greater than maximum value"),
        (valid[:2], "The request's values were refused: An event handler (stream_answers) didn't receive enough input values"),
    ]
    for inputs, message in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sam_studio"), pytest.raises(gr.Error) as refused:
            asyncio.run(demo.preprocess_data(compare, inputs, None))
        assert message in refused.value.message and not refused.value.print_exception
        assert "\n" not in refused.value.message and len(refused.value.message) < 250, refused.value.message
        assert [record.getMessage() for record in caplog.records] == [f"refused: {refused.value.message}"]


def test_the_pages_own_refusals_print_no_traceback(settings):
    demo = build_demo(SamService(settings))
    move = next(block_fn for block_fn in demo.fns.values() if block_fn.name == "<lambda>" and block_fn.fn.__defaults__ == ("earlier",))
    with pytest.raises(gr.Error, match="Select an image in the gallery first.") as refused:
        move.fn(None, None)
    assert not refused.value.print_exception


def test_an_upload_request_larger_than_a_requests_worth_of_images_is_refused_unread():
    received = []

    async def upload(request):
        received.append(len(await request.body()))
        return PlainTextResponse("stored")

    client = TestClient(UploadLimit(Starlette(routes=[Route("/gradio_api/upload", upload, methods=["POST"])]), max_bytes=2**20))
    assert client.post("/gradio_api/upload", files={"files": ("a.png", b"x" * 1000)}).text == "stored"
    too_much = client.post("/gradio_api/upload", files=[("files", (f"{i}.png", b"x" * 100_000)) for i in range(11)])
    assert too_much.status_code == 413 and too_much.text == "Uploads are limited to 1 MB per request; got 1 MB."
    unsized = client.post("/gradio_api/upload", content=iter([b"x" * 10]), headers={"content-type": "multipart/form-data; boundary=x"})
    assert unsized.status_code == 411
    assert len(received) == 1
