import json
import shutil
import subprocess
import sys
from pathlib import Path

from sam_core.cli import main

EXAMPLE = sorted(str(p) for p in Path("tests/data/minilink-3").glob("*.png"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sam_core", *args], capture_output=True, text=True, timeout=300)


def test_generate_on_the_shipped_checkpoint_prints_both_answers():
    done = run_cli("generate", "--images", *EXAMPLE, "--task", "group", "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].strip().startswith("SAM:") and lines[1].strip().startswith("baseline:")
    assert "every picture shows" in lines[0]  # the trained MiniLINK model answers in its world's words
    assert "guidance is the identity" not in done.stderr


def test_the_cli_gives_the_first_examples_measured_answers():
    """The app's first example (chosen by `python -m app.examples`: SAM names the shared object, the baseline does
    not), through the CLI: the same answers as measured when it was chosen."""
    folder = Path("examples/group-sam-binds")
    example = json.loads((folder / "example.json").read_text())[0]
    images = [str(folder / name) for name in example["images"]]
    done = run_cli("generate", "--images", *images, "--task", "group", "--max-new-tokens", "32", "--json")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    assert {mode: answers[mode]["text"] for mode in ("sam", "baseline")} == example["answers"]
    assert example["outcome"] == {"sam": "right", "baseline": "wrong"}


def test_a_model_without_adapter_is_flagged(tiny_checkpoint):
    done = run_cli("generate", "--images", *EXAMPLE, "--task", "group", "--max-new-tokens", "3", "--model", str(tiny_checkpoint))
    assert done.returncode == 0, done.stderr
    assert "guidance is the identity" in done.stderr


def test_json_result_has_model_info_and_timings():
    done = run_cli("generate", "--images", *EXAMPLE, "--prompt", "what is shared?", "--json", "--preset", "paper", "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"]["source"] == "embedded" and result["model"]["guidance_identity"] is False
    assert result["images"] == ["1.png", "2.png", "3.png"]
    for answer in result["answers"].values():
        assert answer["seconds"] > 0 and answer["new_tokens"] > 0
    assert not any("/" in value for value in result["images"])


def test_bad_input_is_one_readable_line_and_nonzero_exit(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    done = run_cli("generate", "--images", str(fake), "--task", "group")
    assert done.returncode == 2 and done.stderr.strip() == "error: fake.png: not a readable image (UnidentifiedImageError)"
    story = run_cli("generate", "--images", *EXAMPLE, "--task", "story", "--captions", "only one")
    assert story.returncode == 2 and "one caption per image but the last" in story.stderr
    assert "Traceback" not in done.stderr + story.stderr


def test_info_describes_the_embedded_model():
    done = run_cli("info", "--context", "others")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["context"] == "others" and info["num_query_tokens"] == 1 and info["warning"] is None
    # one truth with the app: the adapter's source, the precision in use and what the weights take in it
    assert info["adapter"] == "in the checkpoint" and info["guidance_identity"] is False and info["adapter_tensors"] == {}
    assert info["precision"] == "4-bit NF4 language model, float32 elsewhere" and 0 < info["weights_mb"] < 20


def test_full_precision_is_noted_with_its_reason(capsys):
    assert main(["generate", "--images", *EXAMPLE, "--task", "group", "--quantization", "none", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err == "note: Full precision: quantization is set to none (SAM_QUANTIZATION / --quantization).\n"


def test_prompt_and_weight_problems_are_one_readable_line(tmp_path, capsys):
    """In-process (the subprocess test above covers the entry point): each case prints one line and exits 2."""
    broken = shutil.copytree("checkpoints/minilink", tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    cases = {
        ("--prompt", "compare {image#1} with {image#4}"): "error: the prompt refers to {image#4} but there are only 3 images",
        ("--prompt", "red " * 600): "error: the prompt is too long: 601 tokens, at most 445 with 3 images and 64 new tokens",
        ("--prompt", " \x00\t\u200b "): "error: the prompt is empty",
        ("--task", "group", "--model", str(broken)): "error: Could not load the model in",
    }
    for arguments, message in cases.items():
        assert main(["generate", "--images", *EXAMPLE, *arguments]) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith(message) and len(stderr.strip().splitlines()) == 1, stderr


def test_unicode_and_control_characters_in_a_prompt_are_answered(capsys):
    assert main(["generate", "--images", *EXAMPLE, "--prompt", "what\x1b[31m is \u202eshared 🙂 日本?\x00", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.count(":") >= 2
