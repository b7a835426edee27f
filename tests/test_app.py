"""End to end: the real app (`python app.py`) on 127.0.0.1, driven through gradio_client."""

import json
import shutil
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from app.privacy import ABSOLUTE_PATH
from benchmarks.load import example_cases, run_load, serve_app
from conftest import FAKE_SECRET

EXAMPLE = sorted(str(p) for p in Path("tests/data/minilink-3").glob("*.png"))


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def compare(client, files, task="Group captioning", question="", captions=""):
    return client.predict([handle_file(f) for f in files], task, question, captions, "greedy", 8, 0, api_name="/compare")


def test_compare_returns_both_answers_and_the_model(client):
    sam, baseline, details = compare(client, EXAMPLE)
    assert sam.strip() and baseline.strip()
    details = json.loads(details)
    info, stats = details["model"], details["stats"]
    assert info["source"] == "embedded" and "guidance_identity" in info
    assert stats["batched"] is True and 0 < stats["seconds"] < 60 and stats["rss_mb"] > 0
    assert "/" not in info["name"]  # no server paths in responses


def test_bad_inputs_get_clear_errors_and_the_next_request_works(client, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(Exception, match="not a readable image"):
        compare(client, [EXAMPLE[0], str(fake)])
    with pytest.raises(Exception, match="At most 4 images"):
        compare(client, EXAMPLE + EXAMPLE)
    with pytest.raises(Exception, match=r"needs 2 captions \(one per image but the last\); got 1"):
        compare(client, EXAMPLE, task="Storytelling", captions="only one")
    with pytest.raises(Exception, match="Write a question"):
        compare(client, EXAMPLE, task="Free question", question="   ")
    sam, baseline, _ = compare(client, EXAMPLE, task="Storytelling", captions="bobo jumps .\nbobo sleeps .")
    assert sam.strip() and baseline.strip()


def test_explain_returns_every_view_and_a_report(client):
    numbers, report = client.predict([handle_file(f) for f in EXAMPLE], "Group captioning", "", "", 6, 0, api_name="/explain")
    data = json.loads(numbers)
    assert set(data["answers"]) == {"sam", "baseline"} and len(data["images"]) == 3
    for key in ("guidance", "attention", "image_attribution", "patch_attribution", "word_attribution", "alignment"):
        assert key in data
    assert len(data["image_attribution"]["sam"]["scores"][0]) == 3
    html = Path(report).read_text()
    assert html.startswith("<!DOCTYPE html>") and "Guidance maps" in html and "data:image/png;base64," in html


def test_the_api_cannot_read_arbitrary_server_paths(app_url, tmp_path):
    """A raw API call naming a file on the server that nobody uploaded is refused (no gradio_client, which would
    upload the file itself)."""
    import httpx

    secret = tmp_path / "secret.png"
    secret.write_bytes(Path(EXAMPLE[0]).read_bytes())
    server_file = {"path": str(secret), "meta": {"_type": "gradio.FileData"}}

    def call(file_data):
        data = [[file_data], "Group captioning", "", "", "greedy", 4, 0]
        event = httpx.post(f"{app_url}gradio_api/call/compare", json={"data": data}, timeout=30).json()["event_id"]
        return httpx.get(f"{app_url}gradio_api/call/compare/{event}", timeout=60).text

    assert "event: error" in call(server_file)
    with secret.open("rb") as handle:  # the same bytes, uploaded the normal way, are accepted
        uploaded = httpx.post(f"{app_url}gradio_api/upload", files={"files": handle}, timeout=30).json()[0]
    assert "event: complete" in call({"path": uploaded, "meta": {"_type": "gradio.FileData"}})


@pytest.fixture(scope="module")
def strained_app(tmp_path_factory):
    """An app with a queue of one and weights that cannot be read."""
    folder = tmp_path_factory.mktemp("strained")
    broken = shutil.copytree("checkpoints/minilink", folder / "broken-model")
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with serve_app(folder / "app.log", SAM_MODEL=str(broken), SAM_QUEUE_SIZE="1", SAM_CONCURRENCY="1", HF_HUB_OFFLINE="1") as app:
        yield app


def test_a_full_queue_says_busy_and_broken_weights_leave_the_app_serving(strained_app):
    _, _, details = compare(Client(strained_app.url, verbose=False), EXAMPLE)
    notice = json.loads(details)["notice"]
    assert "not a readable safetensors file" in notice and "Serving the embedded default" in notice
    assert "broken-model" in notice and "/broken-model" not in notice  # the directory's name, not its server path
    result = run_load(strained_app.url, example_cases()[:3], requests=24, clients=8, max_new_tokens=16)
    assert result.busy > 0 and result.ok > 0, result.markdown()
    assert result.ok + result.busy == 24 and result.wrong == result.failed == 0, result.problems


def test_responses_and_logs_carry_no_server_paths_or_secrets(client, app_server):
    with pytest.raises(Exception) as refused:
        compare(client, [EXAMPLE[0], __file__])
    assert "test_app.py: not a readable image" in str(refused.value)
    _, _, details = compare(client, EXAMPLE)
    for text in (str(refused.value), details):
        assert not ABSOLUTE_PATH.search(text) and FAKE_SECRET not in text, text
    log = app_server.log_path.read_text()
    assert "Running on local URL" in log
    assert FAKE_SECRET not in log and str(Path.cwd()) not in log and not ABSOLUTE_PATH.search(log), log
