"""The /evaluate API of the real app (`python app.py`), through gradio_client: the numbers and files of
`python -m sam_core.evaluate` on the same samples (generated or uploaded), clear refusals, cancelling, and a
/compare from someone else answered while an evaluation runs."""

import json
import threading
import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from sam_core.data import MiniLinkConfig, write_split
from sam_core.evaluate import main

EXAMPLE = sorted(str(p) for p in Path("tests/data/minilink-3").glob("*.png"))
ALL_TASKS = ["group", "story", "question"]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def evaluate_minilink(client, size, min_images=3, max_images=4, tokens=24, tasks=ALL_TASKS):
    result, files = client.predict("minilink", size, min_images, max_images, 0, True, 2, tasks, None, None, tokens,
                                   api_name="/evaluate")
    return json.loads(result), files


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def command_line_rows(argv: list[str], out: Path) -> list[dict]:
    """results.json of `python -m sam_core.evaluate ARGV --out OUT`, without the timings."""
    main(argv + ["--out", str(out)])
    return without_seconds(json.loads((out / "results.json").read_text()))


def test_the_api_gives_the_command_lines_numbers_and_files(client, tmp_path):
    result, files = evaluate_minilink(client, 10)
    assert result["status"] == "complete" and result["samples_done"] == 10 and len(result["samples"]) == 10
    argv = result["command"].split()[3:]
    argv = argv[:argv.index("--out")]
    assert without_seconds(result["rows"]) == command_line_rows(argv, tmp_path)
    names = {Path(f).name for f in files}
    assert {"predictions.json", "predictions.csv", "results.json", "results.csv", "results.md", "results.png",
            "samples.csv", "by_images.csv", "by_task.png", "by_alpha.json", "alignment.csv"} <= names
    served = {Path(f).name: Path(f) for f in files}
    assert json.loads(served["predictions.json"].read_text()) == json.loads((tmp_path / "predictions.json").read_text())
    assert "| metric | SAM | baseline | SAM ÷ baseline (95% CI) |" in result["table"] and set(result["views"]) == {"by_images", "by_task", "by_alpha", "alignment"}
    sample = result["samples"][0]
    assert {"prompt", "reference", "answer_sam", "answer_baseline", "cider_difference", "outcome", "alpha_lift",
            "alignment_sam", "alignment_baseline"} <= set(sample)
    assert "/" not in json.dumps(result["rows"])  # no server paths in the numbers


def test_an_uploaded_dataset_gives_the_command_lines_numbers(client, tmp_path):
    annotations = write_split(tmp_path / "data", seed=5, size=6, config=MiniLinkConfig(min_images=2, max_images=4))
    images = tmp_path / "images.zip"
    with zipfile.ZipFile(images, "w") as archive:
        for image in sorted((annotations.parent / "images").iterdir()):
            archive.write(image, f"images/{image.name}")
    result, _ = client.predict("upload", 1, 3, 4, 0, True, 2, ALL_TASKS, handle_file(str(annotations)), handle_file(str(images)), 24,
                               api_name="/evaluate")
    result = json.loads(result)
    assert result["samples_done"] == 6 and "--data annotations.json" in result["command"]
    argv = ["--data", str(annotations), "--preset", "greedy", "--max-new-tokens", "24", "--batch-size", "16", "--no-meteor"]
    assert without_seconds(result["rows"]) == command_line_rows(argv, tmp_path / "cli")
    assert "by_alpha" not in result["views"]  # uploads carry no object positions


def test_bad_uploads_get_one_line_errors_and_the_next_run_works(client, tmp_path):
    annotations = write_split(tmp_path / "data", seed=5, size=2, config=MiniLinkConfig(min_images=2, max_images=3))
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as archive:
        archive.writestr("../outside.png", b"x")
    with pytest.raises(Exception, match="Unsafe zip member '../outside.png'"):
        client.predict("upload", 1, 3, 4, 0, True, 2, ALL_TASKS, handle_file(str(annotations)), handle_file(str(unsafe)), 8,
                       api_name="/evaluate")
    with pytest.raises(Exception, match="Upload both the annotations JSON and the zip"):
        client.predict("upload", 1, 3, 4, 0, True, 2, ALL_TASKS, handle_file(str(annotations)), None, 8, api_name="/evaluate")
    with pytest.raises(Exception, match="greater than maximum value 500"):  # Gradio checks the slider's range
        evaluate_minilink(client, 501)
    with pytest.raises(Exception, match="must be a range within 2 to 4"):
        evaluate_minilink(client, 4, min_images=4, max_images=3)
    assert evaluate_minilink(client, 3, tokens=4)[0]["status"] == "complete"


def test_cancel_stops_this_clients_run_and_keeps_what_finished(app_url):
    user = Client(app_url, verbose=False)
    job = user.submit("minilink", 500, 3, 4, 0, True, 2, ALL_TASKS, None, None, 24, api_name="/evaluate")
    while "No evaluation is running" in (answer := user.predict(api_name="/cancel_evaluation")):
        assert not job.done(), job.result()
        time.sleep(0.2)
    assert answer == "Cancelling…"
    result = json.loads(job.result(timeout=60)[0])
    assert result["status"] == "cancelled" and result["samples_done"] < 500
    assert result["summary"].startswith("Cancelled after")


def test_someone_elses_compare_is_answered_while_an_evaluation_runs(app_url):
    evaluator, other = Client(app_url, verbose=False), Client(app_url, verbose=False)
    job = evaluator.submit("minilink", 500, 3, 4, 0, True, 2, ALL_TASKS, None, None, 24, api_name="/evaluate")
    while job.status().code.name not in ("PROCESSING", "PROGRESS"):
        assert not job.done(), job.result()
        time.sleep(0.1)
    answered = []
    thread = threading.Thread(target=lambda: answered.append(other.predict(
        [handle_file(f) for f in EXAMPLE], "Group captioning", "", "", "greedy", 8, 0, api_name="/compare")))
    thread.start()
    thread.join(timeout=120)
    assert answered and answered[0][0].strip(), "no answer while the evaluation ran"
    assert not job.done(), "the evaluation had already finished: it did not overlap the comparison"
    assert evaluator.predict(api_name="/cancel_evaluation") == "Cancelling…"
    assert json.loads(job.result(timeout=60)[0])["status"] == "cancelled"


def test_a_sample_opens_in_the_main_view_with_its_exact_prompt(settings):
    """The main view rebuilds a sample's prompt from its task controls: the same prompt, or Explain would explain
    something else."""
    from app.evaluation_tab import main_view_inputs
    from app.service import SamService
    from sam_core.data import MiniLink

    service = SamService.__new__(SamService)  # prompt building needs no model
    service.settings = settings
    samples = [MiniLink(2, 1, MiniLinkConfig(min_images=3, max_images=3, tasks=(task,)))[0] for task in ALL_TASKS]
    for sample, expected in zip(samples, ("Group captioning", "Storytelling", "Free question")):
        task, question, captions = main_view_inputs(sample.instruction, 3)
        assert task == expected
        assert service.prompt(task, 3, question, captions) == sample.instruction
    odd = "What is shared?{image#1}Caption#1:   {image#2}Caption#2:"
    assert main_view_inputs(odd, 2) == ("Free question", odd, [])


def test_the_api_cannot_evaluate_files_nobody_uploaded(app_url, tmp_path):
    """A raw call naming server files as the annotations and the zip is refused (gradio_client would upload them)."""
    import httpx

    annotations = write_split(tmp_path / "data", seed=5, size=1, config=MiniLinkConfig(min_images=2, max_images=2))
    images = tmp_path / "images.zip"
    with zipfile.ZipFile(images, "w") as archive:
        for image in (annotations.parent / "images").iterdir():
            archive.write(image, f"images/{image.name}")

    def call(annotations_path, images_path):
        files = [{"path": str(path), "meta": {"_type": "gradio.FileData"}} for path in (annotations_path, images_path)]
        data = ["upload", 1, 3, 4, 0, True, 2, ALL_TASKS, *files, 4]
        event = httpx.post(f"{app_url}gradio_api/call/evaluate", json={"data": data}, timeout=30).json()["event_id"]
        return httpx.get(f"{app_url}gradio_api/call/evaluate/{event}", timeout=60).text

    def upload(path):
        with path.open("rb") as handle:
            return httpx.post(f"{app_url}gradio_api/upload", files={"files": handle}, timeout=30).json()[0]

    answer = call(annotations, images)
    assert "event: error" in answer and "samples_done" not in answer
    assert '"samples_done\\": 1' in call(upload(annotations), upload(images))  # the same files, uploaded: evaluated
