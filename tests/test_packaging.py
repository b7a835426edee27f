"""`pip install .` into a fresh virtual environment gives the library, its embedded model and its commands, which
then work from any directory. Offline: the venv sees this machine's packages (--system-site-packages) and pip
installs only the project (--no-deps --no-index --no-build-isolation)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(command: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_pip_install_gives_the_library_its_model_and_commands_in_any_directory(tmp_path):
    source = tmp_path / "checkout"  # a copy of the checkout without local runs: pip builds in the source tree
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", ".pytest_cache", ".gradio", "runs", "artifacts", "build", "*.egg-info", "venv", ".venv"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", source], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import sam_core.loading as l, visualization.cli as v; print(l.EMBEDDED_DEFAULT, v.__file__)"], elsewhere)
    assert all(path.startswith(str(venv)) for path in where.stdout.split())  # the installed copy, not the checkout
    assert (venv / "bin" / "sam-visualization").is_file()
    example = json.loads((source / "examples" / "group-sam-binds" / "example.json").read_text())[0]
    images = [source / "examples" / "group-sam-binds" / name for name in example["images"]]
    answer = run([venv / "bin" / "sam-core", "generate", "--images", *images, "--prompt", example["prompt"], "--json"], elsewhere)
    answers = json.loads(answer.stdout)["answers"]
    assert {mode: answers[mode]["text"] for mode in ("sam", "baseline")} == example["answers"]  # as measured in the checkout
