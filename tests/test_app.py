"""End to end: the real app (`python app.py`) on 127.0.0.1, driven through gradio_client."""

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app.privacy import server_paths
from benchmarks.load import REPO_ROOT, example_cases, pixel_bomb, run_load, serve_app
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
        assert not server_paths(text) and FAKE_SECRET not in text, text
    log = app_server.log_path.read_text()
    assert "Running on local URL" in log
    assert FAKE_SECRET not in log and str(Path.cwd()) not in log and not server_paths(log), log


@pytest.fixture(scope="module")
def short_lived_app(tmp_path_factory):
    """An app whose cached files expire after 2 s, with temporary folders of its own to count."""
    folder = tmp_path_factory.mktemp("short-lived")
    (folder / "tmp").mkdir()
    with serve_app(folder / "app.log", SAM_CACHE_TTL="2", GRADIO_TEMP_DIR=str(folder / "gradio"), TMPDIR=str(folder / "tmp"),
                   HF_HUB_OFFLINE="1") as app:
        app.temp_dirs = [folder / "gradio", folder / "tmp"]
        yield app


def files_in(folders) -> list[Path]:
    return sorted(path for folder in folders for path in Path(folder).rglob("*") if path.is_file())


def test_temporary_files_stay_bounded(short_lived_app, tmp_path):
    """No file per call that is never removed: uploads and reports expire (SAM_CACHE_TTL), reports are written in
    Gradio's cache (none in $TMPDIR), and no empty file is left per uploaded image."""
    client = Client(short_lived_app.url, verbose=False)
    before = files_in(short_lived_app.temp_dirs)
    for index in range(5):
        fresh = tmp_path / f"fresh{index}.png"  # a new upload each time: Gradio stores uploads by their content
        Image.new("RGB", (32, 32), (index * 40, 90, 200)).save(fresh)
        compare(client, [fresh, *EXAMPLE[1:]])
    for _ in range(2):
        client.predict([handle_file(f) for f in EXAMPLE], "Group captioning", "", "", 4, 0, api_name="/explain")
    during = files_in(short_lived_app.temp_dirs)
    uploads = 5 + len(EXAMPLE)  # each fresh image, and the example's files once (stored by their content)
    assert len(during) <= len(before) + uploads + 2, [str(p) for p in during if p not in before]
    assert not any(path.stat().st_size == 0 for path in during)
    deadline = time.monotonic() + 30
    while files_in(short_lived_app.temp_dirs) != before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert files_in(short_lived_app.temp_dirs) == before


def test_each_refusal_is_one_line_in_the_log_and_never_a_traceback(short_lived_app, tmp_path):
    """Anyone can send these; each costs the log one line, whatever layer refuses it (Gradio's checks of the
    values, the app's checks, the upload limit)."""
    url = short_lived_app.url
    with open(EXAMPLE[0], "rb") as image:
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": image}, timeout=30).json()[0]
    bomb = pixel_bomb(tmp_path / "bomb.png")
    with open(bomb, "rb") as file:
        uploaded_bomb = httpx.post(f"{url}gradio_api/upload", files={"files": file}, timeout=30).json()[0]
    server_file = tmp_path / "server.png"
    server_file.write_bytes(Path(EXAMPLE[0]).read_bytes())

    def file(path):
        return [{"path": str(path), "meta": {"_type": "gradio.FileData"}}]

    def call(body: str) -> str:
        posted = httpx.post(f"{url}gradio_api/call/compare", content=body, headers={"content-type": "application/json"}, timeout=30)
        return httpx.get(f"{url}gradio_api/call/compare/{posted.json()['event_id']}", timeout=60).text

    bodies = [json.dumps({"data": data}) for data in (
        [file(server_file), "Group captioning", "", "", "greedy", 4, 0],  # nobody uploaded it
        [{"not": "files"}, "Group captioning", "", "", "greedy", 4, 0],
        [file(uploaded)],  # too few values
        [file(uploaded), "Group captioning", "", "", "greedy", 4, 2**64],
        [file(uploaded), "Group captioning", "", "", "greedy", 4, None],
        [file(uploaded), "Poetry", "", "", "fastest", 4, 0],
        [file(uploaded), "Free question", "why " * 100_000, "", "greedy", 4, 0],
        [file(uploaded_bomb), "Group captioning", "", "", "greedy", 4, 0],
    )] + ['{"data": [%s, "Group captioning", "", "", "greedy", NaN, 0]}' % json.dumps(file(uploaded))]
    log_before = short_lived_app.log_path.read_text()
    for body in bodies:
        assert "event: error" in call(body)
    too_large = httpx.post(f"{url}gradio_api/upload", files=[("files", (f"{i}.png", bytes(2**20))) for i in range(130)], timeout=60)
    assert too_large.status_code == 413
    time.sleep(1)
    new_lines = short_lived_app.log_path.read_text()[len(log_before):].splitlines()
    assert "Traceback" not in "\n".join(new_lines)
    assert len(new_lines) == len(bodies) + 1 and all(" refused: " in line for line in new_lines), new_lines


def test_file_entries_name_only_files_in_gradios_cache(short_lived_app):
    """Gradio's file protocol names files by their server path (uploads, /config's examples): those paths are all
    inside GRADIO_TEMP_DIR, <folder>/<content hash>/<name>, and no other server path (the app's folder) appears. The
    API page's example values name the repository's example files relative to its root (what a reader types)."""
    url, cache = short_lived_app.url, short_lived_app.temp_dirs[0]
    config = httpx.get(f"{url}config", timeout=30).json()
    with open(EXAMPLE[0], "rb") as image:
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": image}, timeout=30).json()

    def file_paths(value):
        if isinstance(value, dict):
            return [p for key, item in value.items() for p in ([item] if key == "path" and isinstance(item, str) else file_paths(item))]
        return [p for item in value for p in file_paths(item)] if isinstance(value, list) else []

    paths = [path for path in file_paths(config) + uploaded if not path.startswith("http")]  # URLs: Gradio's own samples
    documented = [path for path in paths if path.startswith("examples/")]
    assert documented and all((REPO_ROOT / path).is_file() for path in documented)
    served = [path for path in paths if path not in documented]
    assert set(uploaded) <= set(served) and all(Path(path).parent.parent == cache for path in served), served
    assert httpx.get(f"{url}gradio_api/file={documented[0]}", timeout=30).status_code == 403  # a name, not a file it serves
    assert str(REPO_ROOT) not in json.dumps(config)
