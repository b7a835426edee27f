"""Faults: broken model configuration, out of memory, a figure that fails, the request time limit. The app keeps
serving and says what happened. In-process: the service, and the Blocks' API functions called directly."""

import dataclasses
import json
import shutil
from pathlib import Path

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file

from app.privacy import server_paths
from app.service import Decoding, ResourceError, SamService
from app.ui import build_demo
from sam_core.generation import AnswerDeadline
from sam_core.loading import EMBEDDED_DEFAULT

EXAMPLE = sorted(str(p) for p in Path("tests/data/minilink-3").glob("*.png"))


def api(service: SamService, name: str):
    """The function behind a named API endpoint of the app built on `service`."""
    return next(f.fn for f in build_demo(service).fns.values() if f.api_name == name)


def compare(service, files=EXAMPLE, task="Group captioning", question="", captions="", max_new_tokens=8):
    sam, baseline, details = api(service, "compare")(files, task, question, captions, "greedy", max_new_tokens, 0)
    return sam, baseline, json.loads(details)


def broken_model(kind: str, tmp_path: Path) -> dict:
    """Settings overrides for a model configuration that cannot load."""
    if kind == "hub-unreachable":  # HF_HUB_OFFLINE=1 (conftest) and nothing cached
        return {"model": "Salesforce/instructblip-vicuna-7b"}
    if kind == "wrong-shape-adapter":
        adapter = tmp_path / "adapter.safetensors"
        save_file({"guidance.patch_scorer.weight": torch.zeros(1, 3)}, str(adapter))
        return {"adapter": str(adapter)}
    folder = shutil.copytree(EMBEDDED_DEFAULT, tmp_path / "model")
    weights = folder / "model.safetensors"
    if kind == "missing-weights":
        weights.unlink()
    else:  # corrupt: a truncated file
        weights.write_bytes(weights.read_bytes()[:1000])
    return {"model": str(folder)}


@pytest.mark.parametrize("kind", ["corrupt-weights", "missing-weights", "hub-unreachable", "wrong-shape-adapter"])
def test_a_broken_model_configuration_falls_back_to_the_embedded_default_with_a_notice(settings, tmp_path, kind):
    service = SamService(dataclasses.replace(settings, **broken_model(kind, tmp_path)))
    sam, baseline, details = compare(service)
    assert sam and baseline and details["model"]["source"] == "embedded"
    assert "Serving the embedded default" in details["notice"]
    assert not server_paths(details["notice"]), details["notice"]  # the server's paths stay on the server
    assert str(tmp_path) not in json.dumps(details)


def test_out_of_memory_is_a_clear_error_and_the_next_request_works(settings, monkeypatch):
    service = SamService(settings)
    generate = service.pipeline.model.generate
    calls = []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return generate(*args, **kwargs)

    monkeypatch.setattr(service.pipeline.model, "generate", out_of_memory_once)
    with pytest.raises(gr.Error, match="Out of memory: try fewer images or fewer new tokens"):
        compare(service)
    assert not service.lock.locked()
    sam, baseline, _ = compare(service)
    assert sam and baseline
    calls.clear()
    with pytest.raises(ResourceError, match="Out of memory"):
        service.explain(service.images(EXAMPLE), "what is shared ?", Decoding(max_new_tokens=4))
    assert service.explain(service.images(EXAMPLE), "what is shared ?", Decoding(max_new_tokens=4)).capture.answers["sam"].text


def test_a_figure_that_fails_leaves_the_other_views_and_a_note(settings, monkeypatch):
    def broken_plot(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr("visualization.report.plot_alignment", broken_plot)
    numbers, html_path = api(SamService(settings), "explain")(EXAMPLE, "Group captioning", "", "", 4, 0)
    data = json.loads(numbers)
    assert data["figure_failures"] == {"alignment": "RuntimeError"}
    assert data["answers"]["sam"]["text"] and data["alignment"]["sam"]["similarity"]  # the numbers are all there
    html = Path(html_path).read_text()
    assert "The alignment figure could not be drawn" in html
    assert html.count("data:image/png;base64,") >= 4 + len(EXAMPLE)  # the other figures and the thumbnails


def test_the_request_time_limit_cuts_answers_short_and_says_so(settings):
    sam, baseline, details = compare(SamService(settings), max_new_tokens=30)
    assert details["cut_short"] == [] and len(sam.split()) > 2
    hurried = SamService(dataclasses.replace(settings, request_timeout=1e-6))
    short_sam, short_baseline, details = compare(hurried, max_new_tokens=30)
    assert details["cut_short"] == ["sam", "baseline"]
    assert len(short_sam) < len(sam) and len(short_baseline) < len(baseline)
    states = list(hurried.compare(hurried.images(EXAMPLE), "what is shared ?", Decoding(max_new_tokens=30)))
    assert states[-1]["cut_short"] == ["sam", "baseline"]
    sampled = list(hurried.compare(hurried.images(EXAMPLE), "what is shared ?", Decoding("sampling", max_new_tokens=30)))
    assert sampled[-1]["cut_short"] == ["sam", "baseline"] and sampled[-1]["stats"]["batched"] is False


def test_the_analysis_says_which_answers_the_time_limit_cut_short(settings):
    full = json.loads(api(SamService(settings), "explain")(EXAMPLE, "Group captioning", "", "", 8, 0)[0])
    assert full["cut_short"] == []
    hurried = SamService(dataclasses.replace(settings, request_timeout=1e-6))
    short = json.loads(api(hurried, "explain")(EXAMPLE, "Group captioning", "", "", 8, 0)[0])
    assert short["cut_short"] == ["sam", "baseline"]
    for mode in ("sam", "baseline"):
        assert len(short["answers"][mode]["text"]) < len(full["answers"][mode]["text"])


def test_the_deadline_records_each_generate_call_it_cut_short():
    deadline = AnswerDeadline(seconds=3600)
    running = torch.zeros(2, 5, dtype=torch.long)
    assert not deadline(running, None).any()
    deadline.seconds = 0  # the second call (a shorter sequence: the next answer began) runs out at once
    assert deadline(running[:, :3], None).all()
    assert deadline.cut_short == [False, True] and deadline.reached
